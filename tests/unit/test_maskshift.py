"""Mask-shift DDNM: exact consistency per supported task, finished pixels held fixed, wavefront == raster
with far less depth, order- and batch-free noise, clear errors for unsupported tasks."""

from __future__ import annotations

import pytest
import torch

from ddnm.metrics import consistency
from ddnm.operators import build as build_op
from ddnm.sampling import image_generator, linear_schedule, maskshift_sample
from ddnm.sampling.maskshift import restrict, supported_tasks

ABAR = linear_schedule(1000)
H, W = 48, 64  # 5 x 7 windows of 16 px at stride 8
SETTINGS = {"sr_avgpool": {"scale": 4}, "cs_block": {"block": 8}}


def gens(keys, seed=0):
    return [image_generator(seed, k) for k in keys]


@pytest.fixture(scope="module")
def tiny64():
    from ddnm.models import build

    return build("tiny", dtype=torch.float64)


def _problem(task, B=1, seed=3, **settings):
    op = build_op(task, x_shape=(3, H, W), dtype=torch.float64, **{**SETTINGS.get(task, {}), **settings})
    g = torch.Generator().manual_seed(seed)
    return op, op.A(torch.rand(B, 3, H, W, generator=g, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("task", supported_tasks())
def test_window_operator_is_the_restriction_of_the_global_one(task):
    """crop(A^+ A x) == A_w^+ A_w crop(x): the window's projection is the global one's, cut out."""
    op, _ = _problem(task)
    x = torch.rand(2, 3, H, W, dtype=torch.float64)
    full = op.A_pinv(op.A(x))
    box = (8, 16, 16, 16)
    w = restrict(op, box)
    xs = x[..., 8:24, 16:32]
    torch.testing.assert_close(w.A_pinv(w.A(xs)), full[..., 8:24, 16:32], rtol=0, atol=1e-12)


@pytest.mark.parametrize("task", supported_tasks())
def test_every_supported_task_is_exactly_consistent(task, tiny64, one_thread):
    op, y = _problem(task)
    out = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, margin=0 if task == "cs_block" else 4,
                           steps=2, generators=gens(["a"]))
    assert out.windows == 35 and out.x.shape == (1, 3, H, W)
    err = consistency(op, out.x, y)
    assert torch.all(err <= 1e-5), err


def test_finished_pixels_are_held_fixed(tiny64, one_thread):
    op, y = _problem("sr_avgpool")
    seen = []
    out = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, steps=2, generators=gens(["a"]),
                           on_window=lambda i, j, box, x, m: seen.append((box, x, m)))
    assert len(seen) == 35 and sum(float(m.sum()) > 0 for _, _, m in seen) == 34
    for (top, left, h, w), x, m in seen:
        final = out.x[..., top : top + h, left : left + w]
        torch.testing.assert_close(x * m, final * m, rtol=0, atol=1e-12)  # known: untouched


def test_wavefront_equals_raster_with_far_less_depth(tiny64, one_thread):
    op, y = _problem("inpaint", B=2)
    wave = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, steps=2, generators=gens(["a", "b"]))
    rast = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, order="raster", steps=2,
                            generators=gens(["a", "b"]))
    torch.testing.assert_close(wave.x, rast.x, rtol=0, atol=1e-12)
    assert wave.model_calls == rast.model_calls == 35 * 2
    assert (wave.depth, rast.depth) == ((5 + 7 - 1) * 2, 35 * 2)


def test_result_does_not_depend_on_window_batch_or_other_images(tiny64, one_thread):
    g = torch.Generator().manual_seed(4)
    masks = (torch.rand(2, 1, H, W, generator=g) > 0.5).double()
    op, y = _problem("inpaint", B=2, masks=masks)
    full = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, margin=4, steps=2,
                            generators=gens(["a", "b"]))
    chunked = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, margin=4, steps=2, window_batch=2,
                               generators=gens(["a", "b"]))
    one = maskshift_sample(tiny64, y[1:], op.select([1]), ABAR, window=16, stride=8, margin=4, steps=2,
                           generators=gens(["b"]))
    torch.testing.assert_close(chunked.x, full.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(one.x[0], full.x[1], rtol=0, atol=1e-12)
    assert chunked.depth > full.depth


def test_ddnm_plus_and_time_travel_run(tiny64, one_thread):
    op, y = _problem("sr_avgpool")
    y = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    plain = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, steps=2, generators=gens(["a"]))
    plus = maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, steps=2, sigma_y=0.1, travel=(1, 1, 2),
                            generators=gens(["a"]))
    assert torch.isfinite(plus.x).all() and (plus.x - plain.x).abs().max() > 1e-3
    assert plus.model_calls == 35 * 3


@pytest.mark.parametrize("task", ["sr_bicubic", "deblur_gauss", "old_photo"])
def test_unsupported_tasks_and_misaligned_windows_raise(task, tiny64):
    op, y = _problem(task)
    with pytest.raises(ValueError, match="mask-shift supports"):
        maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, steps=1, generators=gens(["a"]))
    op, y = _problem("sr_avgpool")
    with pytest.raises(ValueError, match="stride must be a positive multiple of the operator's block 4"):
        maskshift_sample(tiny64, y, op, ABAR, window=16, stride=6, steps=1, generators=gens(["a"]))
    with pytest.raises(ValueError, match="margin"):
        maskshift_sample(tiny64, y, op, ABAR, window=16, stride=8, margin=12, steps=1, generators=gens(["a"]))
    with pytest.raises(ValueError, match="order"):
        maskshift_sample(tiny64, y, op, ABAR, window=16, order="spiral", steps=1, generators=gens(["a"]))


def test_maskshift_seams_on_real_photos(one_thread):
    """4x SR of chelsea and coffee (128 px, bundled prior, 20 steps), 32 px windows at stride 16 with a
    4 px margin: measured seam ratio ~1.2, above the tiled path's ~1.03 (the 15% target is not met by
    mask-shift; bench/RESULTS.md). Guards against a regression to the ~1.5 of margin 0 or worse."""
    pytest.importorskip("skimage.data")
    import importlib.util
    import sys
    from pathlib import Path

    from ddnm.models import build

    path = Path(__file__).resolve().parents[2] / "bench" / "large_image.py"
    spec = importlib.util.spec_from_file_location("large_image_ms", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        photos = torch.cat([bench.load_photo("chelsea", 128), bench.load_photo("coffee", 128)])
        r = bench.run("wavefront", build("small-prior"), photos, steps=20, ms_stride=16, ms_margin=4)
    finally:
        sys.modules.pop(spec.name, None)
    print(f"mask-shift: seam {r['seam']:.3f}, PSNR {r['psnr']:.2f} dB")
    assert r["seam"] < 1.35 and r["consistency"] < 1e-4
