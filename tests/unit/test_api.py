"""ddnm.restore (the notebook API) and sample_batch (the worker's path) with the tiny random ADM."""

import numpy as np
import pytest
import torch
from PIL import Image

import ddnm
from ddnm.api import Sampling, sample_batch, to_tensor
from ddnm.models import build as build_model
from ddnm.operators import build as build_op


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny")


def _images(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def test_evaluate_mode_metrics(tiny):
    res = ddnm.restore(_images(), "sr_avgpool", tiny, scale=2, steps=3, seed=1)
    assert res.images.shape == (2, 3, 16, 16) and res.std is None
    assert 0.0 <= res.images.min() and res.images.max() <= 1.0
    assert res.observations.shape == (2, 3, 8, 8)
    assert res.observation_images.shape == (2, 3, 8, 8)
    assert len(res.metrics) == 2
    for row in res.metrics:
        assert {"psnr", "ssim", "consistency", "consistency_clamped", "model_calls", "samples",
                "seconds"} <= set(row)
        assert row["consistency"] < 1e-3 and row["model_calls"] == 3 and row["samples"] == 1
        assert np.isfinite(row["psnr"])


def test_model_by_name_and_pil_input():
    pil = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    res = ddnm.restore(pil, "inpaint", "tiny", steps=2, keep=0.5)
    assert res.images.shape == (1, 3, 16, 16)
    assert len(res.to_pil()) == 1 and res.to_pil()[0].size == (16, 16)


def test_restore_mode_from_a_degraded_image(tiny):
    small = _images(size=8)
    res = ddnm.restore(small, "sr_avgpool", tiny, mode="restore", scale=2, steps=2)
    assert res.images.shape == (2, 3, 16, 16)
    assert "psnr" not in res.metrics[0] and "consistency" in res.metrics[0]
    assert res.metrics[0]["consistency"] < 1e-3


def test_k_samples_give_a_std_map(tiny):
    res = ddnm.restore(_images(), "colorize", tiny, steps=2, samples=3)
    assert res.std is not None and res.std.shape == (2, 3, 16, 16)
    assert res.std.max() > 0
    assert res.metrics[0]["samples"] == 3


def test_sample_zero_of_k_equals_the_single_run(tiny):
    op = build_op("sr_avgpool", x_shape=(3, 16, 16), scale=2)
    y = op.A(_images() * 2 - 1)
    one = sample_batch(tiny, op, y, keys=["a", "b"], sampling=Sampling(steps=2, canvas="whole"))
    seen = []
    sample_batch(tiny, op, y, keys=["a", "b"], sampling=Sampling(steps=2, samples=3, canvas="whole"),
                 callback=lambda k, t, x0: seen.append(x0.clone()))
    single = []
    sample_batch(tiny, op, y, keys=["a", "b"], sampling=Sampling(steps=2, canvas="whole"),
                 callback=lambda k, t, x0: single.append(x0.clone()))
    assert torch.allclose(seen[-1][0], single[-1][0], atol=1e-4)  # image a, sample 0 (float32 rounding)
    assert torch.allclose(seen[-1][3], single[-1][1], atol=1e-4)  # image b, sample 0
    assert torch.allclose(one.x, single[-1], atol=1e-4)


def test_evaluate_noise_is_keyed_and_sigma_is_on_the_01_scale(tiny):
    x = _images(1)
    a = ddnm.restore(x, "denoise", tiny, steps=2, sigma_y=0.1, keys=["k"])
    b = ddnm.restore(x, "denoise", tiny, steps=2, sigma_y=0.1, keys=["k"])
    assert torch.equal(a.observations, b.observations)
    noise = a.observations - (x * 2 - 1)
    assert 0.17 < noise.std().item() < 0.23  # 2 * 0.1 on the [-1, 1] scale


def test_bad_inputs_name_the_field(tiny):
    with pytest.raises(ValueError, match="mode"):
        ddnm.restore(_images(), "denoise", tiny, mode="nope", steps=1)
    with pytest.raises(ValueError, match="keys"):
        ddnm.restore(_images(), "denoise", tiny, steps=1, keys=["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_tensor(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="unknown task"):
        ddnm.restore(_images(), "nope", tiny, steps=1)


def test_python_m_ddnm_lists_tasks_and_models(capsys):
    import json

    from ddnm.__main__ import main

    assert main(["tasks", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert {"sr_bicubic", "inpaint", "colorize"} <= {t["name"] for t in tasks}
    assert main(["models", "--json"]) == 0
    assert "tiny" in {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert main(["tasks"]) == 0 and "sr_bicubic" in capsys.readouterr().out
