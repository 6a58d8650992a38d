"""Property tests every registered operator passes (odd sizes, B = 1 and 3, float64).

Driven by the registry: a new task is picked up with its default settings; the tables below only
shrink settings or adapt sizes where an operator requires it.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ddnm.operators import TASKS, build

DT = torch.float64
DEFAULT_SHAPE = (3, 24, 40)
SHAPES = {"cs_walsh": (3, 16, 32)}  # Walsh-Hadamard needs powers of two
SETTINGS = {
    "cs_block": {"block": 8},
    "sr_avgpool": {"scale": 4},
    "sr_bicubic": {"scale": 4},
    "old_photo": {"mask": "random", "scale": 2},
}
PER_IMAGE = {"inpaint", "old_photo"}  # tasks that take per-image masks via `masks`
TASK_NAMES = sorted(TASKS)
BATCHES = (1, 3)


def _shape(task: str) -> tuple[int, int, int]:
    return SHAPES.get(task, DEFAULT_SHAPE)


@functools.cache
def _op(task: str, B: int):
    settings = dict(SETTINGS.get(task, {}))
    C, H, W = _shape(task)
    if task in PER_IMAGE and B > 1:
        g = torch.Generator().manual_seed(7)
        settings.pop("mask", None)
        settings["masks"] = (torch.rand(B, 1, H, W, generator=g) > 0.4).to(DT)
    return build(task, _shape(task), dtype=DT, **settings)


def _x(task: str, B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, *_shape(task), generator=g, dtype=DT) * 2 - 1


def _close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)


params = pytest.mark.parametrize("task,B", [(t, b) for t in TASK_NAMES for b in BATCHES])
svd_params = pytest.mark.parametrize(
    "task,B", [(t, b) for t in TASK_NAMES for b in BATCHES if TASKS[t].has_svd]
)


def test_every_task_name_is_registered():
    expected = {"sr_avgpool", "sr_bicubic", "colorize", "inpaint", "cs_walsh", "cs_block", "deblur_uniform",
                "deblur_gauss", "deblur_aniso", "denoise", "old_photo"}
    assert set(TASKS) == expected


@params
def test_range_consistency(task, B):
    op, x = _op(task, B), _x(task, B)
    y = op.A(x)
    assert y.shape[0] == B
    _close(op.A(op.A_pinv(y)), y)


@params
def test_null_space_is_annihilated(task, B):
    op, x = _op(task, B), _x(task, B)
    y = op.A(x)
    _close(op.A(x - op.A_pinv(y)), torch.zeros_like(y), tol=1e-9 * float(y.abs().max()))


@params
def test_pinv_projection_is_symmetric_and_idempotent(task, B):
    op, x, z = _op(task, B), _x(task, B, 1), _x(task, B, 2)
    P = lambda v: op.A_pinv(op.A(v))  # noqa: E731
    _close(P(P(x)), P(x))
    lhs = (P(x) * z).flatten(1).sum(1)
    rhs = (x * P(z)).flatten(1).sum(1)
    _close(lhs, rhs)


@params
def test_range_projection_is_symmetric(task, B):
    op = _op(task, B)
    y1 = torch.randn_like(op.A(_x(task, B, 1)))
    y2 = torch.randn_like(y1)
    Q = lambda v: op.A(op.A_pinv(v))  # noqa: E731
    _close(Q(Q(y1)), Q(y1))
    _close((Q(y1) * y2).flatten(1).sum(1), (y1 * Q(y2)).flatten(1).sum(1))


@params
def test_linear(task, B):
    op, x, z = _op(task, B), _x(task, B, 1), _x(task, B, 2)
    _close(op.A(2.0 * x - 0.5 * z), 2.0 * op.A(x) - 0.5 * op.A(z))


@params
def test_batched_equals_one_by_one(task, B):
    op, x = _op(task, B), _x(task, B, 3)
    y = op.A(x)
    xp = op.A_pinv(y)
    for i in range(B):
        single = op.select([i])
        _close(single.A(x[i : i + 1]), y[i : i + 1])
        _close(single.A_pinv(y[i : i + 1]), xp[i : i + 1])
        if op.has_svd:
            _close(single.Vt(x[i : i + 1]), op.Vt(x)[i : i + 1])


@svd_params
def test_svd_view(task, B):
    op, x = _op(task, B), _x(task, B, 4)
    D = x[0].numel()
    c = op.Vt(x)
    assert c.shape == (B, D)
    _close(op.V(c), x)
    c2 = torch.randn(B, D, dtype=DT, generator=torch.Generator().manual_seed(5))
    _close(op.Vt(op.V(c2)), c2)
    s = op.singulars()
    assert s.shape in {(D,), (B, D)} and bool((s >= 0).all())
    assert bool((s > 0).any())
    keep = (s > 0).to(DT)
    _close(op.A_pinv(op.A(x)), op.V(keep * c))
    # ||A x|| is carried by the singular values: U is orthonormal on the range
    y = op.A(x)
    _close(y.flatten(1).norm(dim=1), (s * c).norm(dim=1))
    _close(y, op.U(s * c))
    _close(op.Ut(y), s * c)


@params
def test_observe_round_trip_or_refusal(task, B):
    op, x = _op(task, B), _x(task, B, 6)
    y = op.A(x)
    info = TASKS[task]
    if not info.restore_from_image:
        with pytest.raises(NotImplementedError, match=task):
            op.observe(op.y_to_image(y))
        with pytest.raises(NotImplementedError, match=task):
            info.x_shape_from_observation((3, 8, 8), **SETTINGS.get(task, {}))
        return
    image = op.y_to_image(y)
    assert image.dim() == 4 and image.shape[0] == B
    settings = {k: v for k, v in SETTINGS.get(task, {}).items() if k in ("scale",)}
    assert info.x_shape_from_observation(tuple(image.shape[1:]), **settings) == _shape(task)
    _close(op.observe(image), y)


def test_settings_tables_are_well_formed():
    for name, info in TASKS.items():
        assert info.name == name and info.description
        for key, entry in info.settings.items():
            default, typ, help_ = entry
            assert isinstance(typ, type) and help_, (name, key)
