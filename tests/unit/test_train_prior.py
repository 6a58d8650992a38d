"""The small prior's training code: seeded data, resumable and reproducible training, export."""

from __future__ import annotations

import json

import pytest
import torch

from ddnm.models.small_prior import build_small_prior
from train import train_prior
from train.data import CropSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crops_are_seeded_and_in_range():
    a, b = CropSampler(crop=16, seed=3), CropSampler(crop=16, seed=3)
    x = a.batch(8)
    assert x.shape == (8, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, b.batch(8), rtol=0, atol=0)
    assert not torch.equal(a.batch(8), x)


def test_held_out_photos_are_refused():
    with pytest.raises(ValueError, match="held-out"):
        CropSampler(crop=16, seed=0, photos={"chelsea": 1.0})


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_grey_share_sets_the_share_of_grey_draws(share):
    data = CropSampler(crop=16, seed=0, grey_share=share)
    grey = torch.tensor(data.grey)
    assert grey.any() and not grey.all()
    p = data.weights / data.weights.sum()
    assert p[grey].sum().item() == pytest.approx(share)
    if share == 0.0:
        x = data.batch(32)
        assert ((x[:, 0] - x[:, 1]).abs().flatten(1).max(1).values > 0).all()  # colour crops only


def test_grey_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match="grey_share"):
        CropSampler(crop=16, seed=0, grey_share=1.0)


def _train(out, *extra):
    train_prior.main(["--batch", "2", "--crop", "16", "--lr", "1e-3", "--warmup", "2", "--seed", "0",
                      "--threads", "1", "--log-every", "1", "--dc-crops", "64", "--out", str(out), *extra])


def test_resumed_training_reproduces_the_uninterrupted_run(tmp_path):
    _train(tmp_path / "straight", "--steps", "4")
    _train(tmp_path / "resumed", "--steps", "4", "--stop-at", "2")
    _train(tmp_path / "resumed", "--steps", "4", "--resume")
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["loss"] for h in straight] == [h["loss"] for h in resumed]
    assert len(straight) == 4
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["ema"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_export_carries_the_dc_prior_and_init_fine_tunes_from_it(tmp_path):
    _train(tmp_path / "base", "--steps", "2")
    weights = tmp_path / "base" / "small_prior.safetensors"
    model = build_small_prior(weights)
    assert model.dc_prior is not None
    assert model.dc_prior.sizes.tolist() == [32.0, 64.0, 128.0]
    _train(tmp_path / "tuned", "--steps", "1", "--init", str(weights), "--grey-share", "0.1")
    tuned = build_small_prior(tmp_path / "tuned" / "small_prior.safetensors")
    # one step moves the weights a little from the initialisation, not back to a fresh net
    base_p, tuned_p = dict(model.net.named_parameters()), dict(tuned.net.named_parameters())
    diffs = [(tuned_p[k] - v).abs().max().item() for k, v in base_p.items()]
    assert 0 < max(diffs) < 0.05
