"""The bundled small prior: loads by name, restores a held-out photo consistently and usefully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddnm.models
from ddnm.api import Sampling, sample_batch
from ddnm.metrics import consistency, psnr
from ddnm.models.small_prior import SMALL_PRIOR_CONFIG, WEIGHTS, build_small_prior
from ddnm.operators import build as build_op

SAMPLE = Path(__file__).resolve().parents[2] / "jobs" / "assets" / "samples" / "chelsea.png"


def _chelsea(size: int) -> torch.Tensor:
    """The held-out demo photo, box-downsampled to ``size``: (1, 3, size, size) float64 in [-1, 1]."""
    img = Image.open(SAMPLE).convert("RGB").resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(img, dtype=np.float64) / 127.5 - 1.0).permute(2, 0, 1)[None]


pytestmark = pytest.mark.usefixtures("one_thread")


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
    out = sample_batch(model, op, y, keys=["chelsea"], sampling=Sampling(steps=10, canvas="whole"))
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
    out = sample_batch(model, op, y, keys=["chelsea"], sampling=Sampling(steps=10, samples=4, canvas="whole"))
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


def _gaussian_dc_prior(seed: int = 0):
    from ddnm.models.small_prior import DCPrior

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.2
    cov = a @ a.T + 0.01 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([0.1, -0.2, -0.3], dtype=torch.float64)
    return DCPrior(torch.tensor([8.0], dtype=torch.float64), mean[None], cov[None])


@pytest.mark.parametrize("t", [999, 900, 700, 300])
def test_dc_prior_is_the_bayes_estimate_of_the_image_mean(t):
    """Images whose channel means follow the prior: the x0 mean implied by eps_mean has the posterior
    variance (the minimum), far below the x0 mean of an eps with mean 0 (what the UNet gives)."""
    prior = _gaussian_dc_prior()
    g = torch.Generator().manual_seed(1)
    b, n = 4000, 8 * 8
    chol = torch.linalg.cholesky(prior.cov[0])
    m = prior.mean[0] + torch.randn(b, 3, generator=g, dtype=torch.float64) @ chol.T
    x0 = m[..., None, None] + 0.3 * torch.randn(b, 3, 8, 8, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean((2, 3), keepdim=True) + m[..., None, None]  # channel means exactly m
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_mean = prior.eps_mean(x_t, abar.expand(b))
    assert eps_mean.shape == (b, 3)
    z = x_t.mean((2, 3))
    err_bayes = ((z - (1 - abar).sqrt() * eps_mean) / abar.sqrt() - m).pow(2).sum(1).mean()
    err_zero = (z / abar.sqrt() - m).pow(2).sum(1).mean()
    cov = prior.cov[0]
    eye = torch.eye(3, dtype=torch.float64)
    post = cov - abar * cov @ torch.linalg.solve(abar * cov + (1 - abar) / n * eye, cov)
    assert err_bayes.item() == pytest.approx(post.trace().item(), rel=0.1)
    assert err_bayes < err_zero


def test_dc_prior_only_replaces_the_mean_of_eps():
    raw = build_small_prior(clip_x0=False, dc_prior=False)
    with_dc = build_small_prior(clip_x0=False)
    assert raw.dc_prior is None and with_dc.dc_prior is not None  # the bundled weights carry one
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([950, 400])
    a, b = raw(x_t, t), with_dc(x_t, t)
    torch.testing.assert_close(a - a.mean((2, 3), keepdim=True), b - b.mean((2, 3), keepdim=True))
    abar = with_dc._abar[t]
    expected = with_dc.dc_prior.eps_mean(x_t, abar)
    torch.testing.assert_close(b.mean((2, 3)).double(), expected, atol=1e-6, rtol=0)


def test_weights_without_a_dc_prior_still_load(tmp_path):
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(WEIGHTS)).items() if not k.startswith("dc_prior.")}
    save_file(state, str(tmp_path / "net_only.safetensors"))
    model = build_small_prior(tmp_path / "net_only.safetensors")
    assert model.dc_prior is None


def test_colorization_sample_beats_grey_on_held_out_photo():
    """One colorized sample of held-out cat crops is closer to the truth than the grey image.

    Without the image-mean prior a sample's global colour is amplified noise (module docstring of
    ddnm.models.small_prior) and scored below grey; the 50-step table is in MODEL_CARD.md.
    """
    img = _chelsea(128).float()
    x = torch.cat([img[..., :64, :64], img[..., 64:, 64:]])
    model = ddnm.models.build("small-prior")
    op = build_op("colorize", x_shape=(3, 64, 64))
    y = op.A(x)
    out = sample_batch(model, op, y, keys=["a", "b"], sampling=Sampling(steps=20, canvas="whole"))
    ref = (x + 1) / 2
    restored = psnr((out.x.clamp(-1, 1) + 1) / 2, ref).mean().item()
    grey = psnr((op.A_pinv(y).clamp(-1, 1) + 1) / 2, ref).mean().item()
    assert restored > grey + 1.0, (restored, grey)
