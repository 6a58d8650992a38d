"""Tiled DDNM: exact global consistency at odd sizes, one tile == untiled, chunking-free, no seams."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ddnm.api import Sampling, sample_batch
from ddnm.metrics import consistency
from ddnm.operators import TASKS
from ddnm.operators import build as build_op
from ddnm.sampling import TiledEps, ddnm_sample, image_generator, linear_schedule, tiled_eps_for
from ddnm.sampling.tiling import axis_weights, model_stride, reflect_pad, tile_starts

ABAR = linear_schedule(1000)
ODD = (72, 104)  # not a multiple of the 32 px tile
SETTINGS = {"cs_block": {"block": 8}, "sr_avgpool": {"scale": 4}, "sr_bicubic": {"scale": 4}}
SHAPES = {"cs_walsh": (64, 128)}  # Walsh-Hadamard CS needs power-of-two sides


def gens(keys, seed=0):
    return [image_generator(seed, k) for k in keys]


@pytest.fixture(scope="module")
def tiny64():
    from ddnm.models import build

    return build("tiny", dtype=torch.float64)


def _problem(task, B=1, dtype=torch.float64, seed=7):
    H, W = SHAPES.get(task, ODD)
    op = build_op(task, x_shape=(3, H, W), dtype=dtype, **SETTINGS.get(task, {}))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g, dtype=dtype) * 2 - 1
    return op, op.A(x)


@pytest.mark.parametrize("n, tile, overlap",
                         [(104, 32, 8), (72, 32, 8), (33, 32, 0), (500, 32, 16), (32, 32, 8)])
def test_tiles_cover_the_canvas_with_the_overlap(n, tile, overlap):
    starts = tile_starts(n, tile, overlap)
    assert starts[0] == 0 and starts[-1] == n - tile
    assert all(b - a <= tile - overlap for a, b in zip(starts[:-1], starts[1:], strict=True))


def test_blending_an_identity_model_returns_the_canvas(one_thread):
    """eps = x_t per tile: the blend sum w x / sum w must give x back everywhere (weights > 0), also on a
    canvas smaller than a tile (reflect-padded and cropped back)."""
    ident = lambda x, t: x  # noqa: E731
    for H, W in (ODD, (24, 40), (5, 70)):
        x = torch.randn(2, 3, H, W, dtype=torch.float64)
        out = TiledEps(ident, tile=32, overlap=8)(x, torch.zeros(2, dtype=torch.long))
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    for w in axis_weights(tile_starts(104, 32, 8), 32, 104):
        assert bool((w > 0).all()) and float(w.max()) == 1.0


def test_reflect_pad_reaches_any_size():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert reflect_pad(x, 40, 33).shape == (1, 1, 40, 33)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_is_exactly_consistent_through_tiles(task, tiny64, one_thread):
    """Noiseless DDNM in float64 through 32 px tiles at 72x104: ||A x - y|| <= 1e-5 before clamping."""
    op, y = _problem(task)
    eps = TiledEps(tiny64, tile=32, overlap=8)
    out = ddnm_sample(eps, y, op, ABAR, steps=2, generators=gens(["a"]))
    assert eps.stats.tiles > 2 * 4  # really several tiles per step
    err = consistency(op, out.x, y)
    assert torch.all(err <= 1e-5), err


def test_one_tile_equals_the_untiled_path_bit_for_bit(tiny64, one_thread):
    op = build_op("sr_avgpool", x_shape=(3, 32, 32), dtype=torch.float64, scale=4)
    y = op.A(torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1)
    plain = ddnm_sample(tiny64, y, op, ABAR, steps=3, generators=gens(["a", "b"])).x
    tiled = ddnm_sample(TiledEps(tiny64, tile=32), y, op, ABAR, steps=3, generators=gens(["a", "b"])).x
    assert torch.equal(plain, tiled)
    assert tiled_eps_for(tiny64, (3, 16, 16)) is tiny64
    assert isinstance(tiled_eps_for(tiny64, (3, 72, 104)), TiledEps)


def test_result_does_not_depend_on_tile_batch_or_the_other_images(tiny64, one_thread):
    op, y = _problem("inpaint", B=2)
    runs = {}
    for tb in (1, 5, 1000):
        eps = TiledEps(tiny64, tile=32, overlap=8, tile_batch=tb)
        runs[tb] = ddnm_sample(eps, y, op, ABAR, steps=2, generators=gens(["a", "b"])).x
        assert eps.stats.calls == 2 * -(-eps.stats.tiles // 2 // tb)  # ceil(tiles per step / tile_batch)
    torch.testing.assert_close(runs[1], runs[5], rtol=0, atol=1e-12)
    torch.testing.assert_close(runs[1], runs[1000], rtol=0, atol=1e-12)
    one = ddnm_sample(TiledEps(tiny64, tile=32), y[1:], op, ABAR, steps=2, generators=gens(["b"])).x
    torch.testing.assert_close(one[0], runs[5][1], rtol=0, atol=1e-12)


def test_time_travel_ddnm_plus_and_k_samples_run_through_tiles(one_thread):
    from ddnm.models import build

    op, y = _problem("sr_avgpool", dtype=torch.float32)
    eps = TiledEps(build("tiny"), tile=32, overlap=8)
    sampling = Sampling(steps=2, travel=(1, 1, 2), samples=2, canvas="whole")
    plain = sample_batch(eps, op, y, keys=["a"], sampling=sampling)
    plus = sample_batch(eps, op, y, keys=["a"], sampling=sampling.replace(sigma_y=0.05))
    assert plain.model_calls == 3 and plain.std is not None and plain.x.shape == (1, 3, *ODD)
    assert torch.isfinite(plus.x).all() and (plus.x - plain.x).abs().max() > 1e-3


def test_bad_settings_name_the_field(tiny64):
    assert model_stride(tiny64) == 2
    with pytest.raises(ValueError, match="stride 2"):
        TiledEps(tiny64, tile=15)
    with pytest.raises(ValueError, match="overlap"):
        TiledEps(tiny64, tile=32, overlap=32)
    with pytest.raises(ValueError, match="tile_batch"):
        TiledEps(tiny64, tile=32, tile_batch=0)


# ------------------------------------------------------------ real photos, the bundled small prior
BENCH = Path(__file__).resolve().parents[2] / "bench" / "large_image.py"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("skimage.data")
    spec = importlib.util.spec_from_file_location("large_image", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def photos(bench):
    """chelsea and coffee (held out of the prior's training), 128x128."""
    return torch.cat([bench.load_photo("chelsea", 128), bench.load_photo("coffee", 128)])


@pytest.fixture(scope="module")
def prior():
    from ddnm.models import build

    return build("small-prior")


def test_tiles_leave_no_seams_on_real_photos(bench, photos, prior, one_thread):
    """4x SR, 20 steps, 32 px tiles: the gradient across tile borders is within 15% of the interior one
    at the same phase of the 4x4 blocks, and PSNR is within 0.3 dB of the whole canvas; tiles without
    overlap do show seams (so the figure can fail)."""
    rows = {m: bench.run(m, prior, photos, steps=20) for m in ("whole", "tiled", "no-overlap")}
    for m, r in rows.items():
        print(f"{m}: seam {r['seam']:.3f}, PSNR {r['psnr']:.2f} dB, consistency {r['consistency']:.1e}")
    assert abs(rows["tiled"]["seam"] - 1) <= 0.15
    assert rows["no-overlap"]["seam"] > 1.5
    assert rows["tiled"]["psnr"] >= rows["whole"]["psnr"] - 0.3
