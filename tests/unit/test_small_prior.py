"""The bundled small prior: loads by name, restores a held-out photo consistently and usefully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddnm.models
from ddnm.api import sample_batch
from ddnm.metrics import consistency, psnr
from ddnm.models.small_prior import SMALL_PRIOR_CONFIG, WEIGHTS, build_small_prior
from ddnm.operators import build as build_op

SAMPLE = Path(__file__).resolve().parents[2] / "jobs" / "assets" / "samples" / "chelsea.png"


def _chelsea(size: int) -> torch.Tensor:
    """The held-out demo photo, box-downsampled to ``size``: (1, 3, size, size) float64 in [-1, 1]."""
    img = Image.open(SAMPLE).convert("RGB").resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(img, dtype=np.float64) / 127.5 - 1.0).permute(2, 0, 1)[None]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: faster than two on a shared 2-core CI machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bundled_weights_load_by_name_and_fit_the_size_limit():
    assert WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size <= 20 * 2**20
    model = ddnm.models.build("small-prior")
    assert model.family == "small-prior"
    assert model.in_channels == 3 and model.image_size == SMALL_PRIOR_CONFIG.image_size
    assert 1_000_000 < model.num_params < 5_000_000
    random = ddnm.models.build("small-prior", "random")
    trained = dict(model.net.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in random.net.named_parameters())


def test_missing_checkpoint_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_small_prior(tmp_path / "nope.safetensors")


def test_restores_held_out_photo_consistently_in_float64():
    x = _chelsea(64)
    model = ddnm.models.build("small-prior", dtype=torch.float64)
    op = build_op("sr_avgpool", x_shape=(3, 64, 64), scale=4)
    y = op.A(x)
    out = sample_batch(model, op, y, keys=["chelsea"], seed=0, steps=10, eta=0.85)
    assert out.x.dtype == torch.float64
    assert torch.isfinite(out.x).all()
    assert consistency(op, out.x, y).max().item() <= 1e-5  # before any clamp


def test_mean_of_samples_beats_nearest_on_held_out_photo():
    """4x SR of the held-out cat: the mean of 4 samples (10 steps) beats nearest = A_pinv y.

    (One 10-step sample is only level with nearest; the 50-step table is in MODEL_CARD.md.)
    """
    x = _chelsea(64).float()
    model = ddnm.models.build("small-prior")
    op = build_op("sr_avgpool", x_shape=(3, 64, 64), scale=4)
    y = op.A(x)
    out = sample_batch(model, op, y, keys=["chelsea"], seed=0, steps=10, eta=0.85, samples=4)
    ref = (x + 1) / 2
    restored = psnr((out.x.clamp(-1, 1) + 1) / 2, ref).item()
    nearest = psnr((op.A_pinv(y).clamp(-1, 1) + 1) / 2, ref).item()
    assert restored > nearest + 0.3, (restored, nearest)


def test_clip_x0_adapter_matches_the_raw_network_where_x0_is_in_range():
    """The clipped adapter only changes eps where the implied x0 leaves [-1, 1]."""
    raw = build_small_prior(clip_x0=False)
    clipped = build_small_prior()
    x0 = _chelsea(32).float() * 0.5
    t = torch.tensor([10])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    abar = clipped._abar[10].float()
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    eps_raw, eps_clip = raw(x_t, t), clipped(x_t, t)
    x0_raw = (x_t - (1 - abar).sqrt() * eps_raw) / abar.sqrt()
    inside = (x0_raw.abs() <= 1).expand_as(eps_raw)
    assert torch.allclose(eps_raw[inside], eps_clip[inside], atol=1e-4)
    x_t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3  # far out of range
    t = torch.tensor([999])
    abar = clipped._abar[999].float()
    assert ((x_t - (1 - abar).sqrt() * clipped(x_t, t)) / abar.sqrt()).abs().max() <= 1 + 1e-3
