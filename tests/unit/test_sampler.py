"""DDNM / DDNM+ sampler: consistency, sigma_y -> 0 limit, batching, determinism, callback."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddnm.sampling import ddnm_sample, image_generator, linear_schedule

ABAR = linear_schedule(1000)


class TinyEps(nn.Module):
    """A random conv eps-net with a time embedding (a few hundred parameters)."""

    def __init__(self, channels=3, width=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(channels, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, channels, 3, padding=1)
        self.emb = nn.Linear(1, width)

    def forward(self, x, t):
        h = self.c1(x) + self.emb(t.to(x.dtype)[:, None] / 1000.0)[:, :, None, None]
        return self.c2(torch.tanh(h))


class MaskOp(nn.Module):
    """y = mask * x with a per-image mask; identity SVD basis, s_i = mask_i."""

    has_svd = True
    name = "toy_mask"

    def __init__(self, mask):  # mask (B, C, H, W) of 0/1
        super().__init__()
        self.register_buffer("mask", mask)
        self.x_shape = tuple(mask.shape[1:])

    def A(self, x):
        return x * self.mask.to(x)

    def A_pinv(self, y):
        return y * self.mask.to(y)

    def Vt(self, x):
        return x.flatten(1)

    def V(self, c):
        return c.view(c.shape[0], *self.x_shape)

    def singulars(self):
        return self.mask.flatten(1)


class PoolOp(nn.Module):
    """f x f average pooling; SVD per block: the constant vector (s = 1/f) and an orthonormal rest."""

    has_svd = True
    name = "toy_pool"

    def __init__(self, x_shape, f, svd=True):
        super().__init__()
        self.x_shape, self.f, self.has_svd = tuple(x_shape), f, svd
        m = torch.randn(f * f, f * f, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        m[:, 0] = 1.0
        q, _ = torch.linalg.qr(m)
        q[:, 0] = q[:, 0].abs()
        self.register_buffer("Q", q)  # columns: orthonormal block basis, column 0 constant

    def A(self, x):
        return F.avg_pool2d(x, self.f)

    def A_pinv(self, y):
        return y.repeat_interleave(self.f, 2).repeat_interleave(self.f, 3)

    def _blocks(self, x):
        B, C, H, W = x.shape
        f = self.f
        return x.view(B, C, H // f, f, W // f, f).permute(0, 1, 2, 4, 3, 5).reshape(B, -1, f * f)

    def Vt(self, x):
        c = self._blocks(x) @ self.Q.to(x)  # (B, nblocks, f*f)
        return c.transpose(1, 2).reshape(x.shape[0], -1)  # coefficient k of every block together

    def V(self, c):
        B, (C, H, W), f = c.shape[0], self.x_shape, self.f
        blocks = c.view(B, f * f, -1).transpose(1, 2) @ self.Q.to(c).T
        return blocks.view(B, C, H // f, W // f, f, f).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)

    def singulars(self):
        C, H, W = self.x_shape
        n = C * (H // self.f) * (W // self.f)
        s = torch.zeros(self.f * self.f, n, dtype=torch.float64)
        s[0] = 1.0 / self.f
        return s.flatten()


def gens(keys, seed=0):
    return [image_generator(seed, k) for k in keys]


def toy_ops(B, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(B, 3, 16, 16, generator=g) > 0.5).to(dtype)
    return {"mask": MaskOp(mask), "pool": PoolOp((3, 16, 16), 4),
            "pool_nosvd": PoolOp((3, 16, 16), 4, svd=False)}


def _x(B, dtype=torch.float64, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, 16, 16, generator=g, dtype=dtype) * 2 - 1)


@pytest.mark.parametrize("name", ["mask", "pool"])
def test_toy_svd_views_are_exact(name):
    op = toy_ops(2)[name]
    x = _x(2)
    assert torch.allclose(op.V(op.Vt(x)), x, atol=1e-12)
    s = op.singulars()
    assert torch.allclose(op.A_pinv(op.A(x)), op.V((s > 0) * op.Vt(x)), atol=1e-12)


@pytest.mark.parametrize("name", ["mask", "pool", "pool_nosvd"])
def test_noiseless_ddnm_is_consistent(name):
    op = toy_ops(2)[name]
    model = TinyEps().double()
    y = op.A(_x(2))
    out = ddnm_sample(model, y, op, ABAR, steps=5, generators=gens(["a", "b"]))
    assert out.model_calls == 5
    assert out.x.dtype == torch.float64
    err = (op.A(out.x) - y).flatten(1).norm(dim=1)
    assert torch.all(err <= 1e-5), err
    clamped = (op.A(out.x.clamp(-1, 1)) - y).flatten(1).norm(dim=1)
    print(f"{name}: consistency {err.tolist()} clamped {clamped.tolist()}")


@pytest.mark.parametrize("name", ["mask", "pool", "pool_nosvd"])
def test_plus_reduces_to_ddnm_as_sigma_goes_to_zero(name):
    """Every x0_hat but the last agrees to 1e-6; at the last step (s = 0) DDNM+ keeps x0_t (lambda = 0),
    so the final outputs differ only on the range of A_pinv, by about sqrt(1 - alpha_bar_0) = 0.01."""
    op = toy_ops(2)[name]
    model = TinyEps().double()
    y = op.A(_x(2))
    runs = []
    for sigma in (0.0, 1e-9):
        seen = []
        out = ddnm_sample(model, y, op, ABAR, steps=6, sigma_y=sigma, generators=gens(["a", "b"]),
                          callback=lambda k, t, x0, seen=seen: seen.append(x0.clone()))
        runs.append((out.x, seen))
    (x_a, seen_a), (x_b, seen_b) = runs
    for a, b in zip(seen_a[:-1], seen_b[:-1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    diff = x_b - x_a
    assert torch.allclose(op.A_pinv(op.A(diff)), diff, atol=1e-6)  # only on the range
    assert diff.abs().max() < 0.1


def test_plus_changes_the_result_when_noise_is_large():
    op = toy_ops(2)["pool"]
    model = TinyEps().double()
    y = op.A(_x(2))
    a = ddnm_sample(model, y, op, ABAR, steps=5, generators=gens(["a", "b"])).x
    b = ddnm_sample(model, y, op, ABAR, steps=5, sigma_y=0.4, generators=gens(["a", "b"])).x
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("sigma", [0.0, 0.2])
@pytest.mark.parametrize("name", ["mask", "pool_nosvd"])
def test_batched_equals_one_by_one(name, sigma):
    B = 3
    op = toy_ops(B)[name]
    model = TinyEps().double()
    y = op.A(_x(B))
    keys = ["k0", "k1", "k2"]
    full = ddnm_sample(model, y, op, ABAR, steps=4, sigma_y=sigma, travel=(1, 1, 2), generators=gens(keys))
    for i in range(B):
        sub = MaskOp(op.mask[i : i + 1]) if name == "mask" else op
        one = ddnm_sample(model, y[i : i + 1], sub, ABAR, steps=4, sigma_y=sigma, travel=(1, 1, 2),
                          generators=gens([keys[i]]))
        assert torch.allclose(one.x[0], full.x[i], atol=1e-10)
    assert full.model_calls == 7


def test_deterministic_by_seed_and_key():
    op = toy_ops(2)["pool"]
    model = TinyEps()
    y = op.A(_x(2, torch.float32))
    run = lambda keys, seed=0: ddnm_sample(model, y, op, ABAR, steps=3, generators=gens(keys, seed)).x  # noqa: E731
    assert run(["a", "b"]).dtype == torch.float32
    assert torch.equal(run(["a", "b"]), run(["a", "b"]))
    assert not torch.allclose(run(["a", "b"])[1], run(["a", "c"])[1])
    assert torch.equal(run(["a", "b"])[0], run(["a", "c"])[0])
    assert not torch.allclose(run(["a", "b"], seed=1), run(["a", "b"], seed=0))


def test_callback_per_model_step_with_x0():
    op = toy_ops(1)["pool"]
    y = op.A(_x(1))
    calls = []
    out = ddnm_sample(TinyEps().double(), y, op, ABAR, steps=10, travel=(2, 2, 2), generators=gens(["a"]),
                      callback=lambda k, t, x0: calls.append((k, t, tuple(x0.shape))))
    assert out.model_calls == len(calls) == 18
    assert [c[0] for c in calls] == list(range(18))
    assert calls[0][1] == 900 and calls[-1][1] == 0
    assert all(c[2] == (1, 3, 16, 16) for c in calls)


def test_learned_sigma_channels_are_dropped():
    op = toy_ops(1)["pool"]
    y = op.A(_x(1))
    six = TinyEps(channels=3)
    six.c2 = nn.Conv2d(8, 6, 3, padding=1).double()
    out = ddnm_sample(six.double(), y, op, ABAR, steps=2, generators=gens(["a"]))
    assert out.x.shape == (1, 3, 16, 16)


def test_bad_arguments_name_the_field():
    op = toy_ops(2)["pool"]
    y = op.A(_x(2))
    with pytest.raises(ValueError, match="generators"):
        ddnm_sample(TinyEps().double(), y, op, ABAR, steps=2, generators=gens(["a"]))
    with pytest.raises(ValueError, match="eta"):
        ddnm_sample(TinyEps().double(), y, op, ABAR, steps=2, eta=1.5, generators=gens(["a", "b"]))
    with pytest.raises(ValueError, match="sigma_y"):
        ddnm_sample(TinyEps().double(), y, op, ABAR, steps=2, sigma_y=-1, generators=gens(["a", "b"]))


def test_image_generator_is_keyed():
    a = torch.randn(4, generator=image_generator(0, "x"))
    assert torch.equal(a, torch.randn(4, generator=image_generator(0, "x")))
    assert not torch.equal(a, torch.randn(4, generator=image_generator(0, "x", "cpu", 1)))
    assert not math.isclose(a[0].item(), torch.randn(4, generator=image_generator(1, "x"))[0].item())


# ---------------------------------------------------------------- every registered operator, tiny ADM
@pytest.fixture(scope="module")
def tiny64():
    from ddnm.models import build

    return build("tiny", dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny32():
    from ddnm.models import build

    return build("tiny")


def _registered():
    from ddnm.operators import TASKS

    return sorted(TASKS)


SMALL = {"cs_block": {"block": 8}}  # settings that fit 16 x 16 images


def _op(task, dtype):
    from ddnm.operators import build

    return build(task, x_shape=(3, 16, 16), dtype=dtype, **SMALL.get(task, {}))


@pytest.mark.parametrize("task", _registered())
def test_every_registered_operator_is_consistent(task, tiny64, record_property):
    """Noiseless DDNM: ||A x - y|| <= 1e-5 in float64 on the unclamped output (the clamped one is
    recorded, not asserted: clamping to [-1, 1] may leave the range of consistent images)."""
    from ddnm.metrics import consistency

    op = _op(task, torch.float64)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    y = op.A(x)
    out = ddnm_sample(tiny64, y, op, ABAR, steps=3, generators=gens(["a", "b"]))
    err = consistency(op, out.x, y)
    clamped = consistency(op, out.x.clamp(-1, 1), y)
    record_property("consistency_clamped", clamped.tolist())
    print(f"{task}: consistency {err.max().item():.2e}, clamped {clamped.max().item():.2e}")
    assert torch.all(err <= 1e-5), err


@pytest.mark.parametrize("task", _registered())
def test_ddnm_plus_runs_for_every_registered_operator(task, tiny32):
    """DDNM+ for every operator (the reference lacks it for some, its issue #82): finite, and it differs
    from noiseless DDNM on noisy y."""
    op = _op(task, torch.float32)
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    y = op.A(x)
    y = y + 0.1 * torch.randn(y.shape, generator=g)
    plain = ddnm_sample(tiny32, y, op, ABAR, steps=3, generators=gens(["a", "b"])).x
    plus = ddnm_sample(tiny32, y, op, ABAR, steps=3, sigma_y=0.1, generators=gens(["a", "b"])).x
    assert torch.isfinite(plus).all()
    assert (plus - plain).abs().max() > 1e-3


def test_batched_equals_one_by_one_with_per_image_masks(tiny64):
    """The tiny ADM and the registered inpaint operator with one mask per image, sliced by op.select."""
    from ddnm.operators import build

    g = torch.Generator().manual_seed(9)
    masks = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).double()
    op = build("inpaint", x_shape=(3, 16, 16), masks=masks, dtype=torch.float64)
    y = op.A(torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1)
    keys = ["p", "q", "r"]
    for sigma in (0.0, 0.1):
        full = ddnm_sample(tiny64, y, op, ABAR, steps=3, sigma_y=sigma, generators=gens(keys)).x
        for i in range(3):
            one = ddnm_sample(tiny64, y[i : i + 1], op.select([i]), ABAR, steps=3, sigma_y=sigma,
                              generators=gens(keys[i : i + 1])).x
            assert torch.allclose(one[0], full[i], atol=1e-9)
