"""One restoration path: ``ddnm.restore`` (notebook) and the worker's ``BatchRestorer`` give identical
tensors and metrics for every task in both modes, on the same inputs as each side reads them."""

from __future__ import annotations

import pytest
import torch

import ddnm
from cluster.config import WorkerConfig
from cluster.restorer import BatchRestorer
from ddnm.operators import TASKS
from ddnm.restoration import METRICS

SETTINGS = {"sr_avgpool": {"scale": 2}, "sr_bicubic": {"scale": 2}, "old_photo": {"scale": 2},
            "cs_block": {"block": 8}, "inpaint": {"mask": "random"}, "deblur_gauss": {"size": 3},
            "deblur_uniform": {"size": 3}, "deblur_aniso": {"size": 3}}
SIZE = 16  # the tiny model's native size


def _inputs(task: str, mode: str) -> torch.Tensor:
    """Two images as each side decodes them: clean RGB (evaluate) or an observation (restore)."""
    g = torch.Generator().manual_seed(7)
    if mode == "evaluate":
        return torch.rand(2, 3, SIZE, SIZE, generator=g)
    scale = SETTINGS.get(task, {}).get("scale", 1) if task.startswith(("sr_", "old_")) else 1
    channels = 1 if TASKS[task].observes_grey else 3
    return torch.rand(2, channels, SIZE // scale, SIZE // scale, generator=g)


CASES = [(t, m) for t in sorted(TASKS) for m in ("evaluate", "restore")
         if m == "evaluate" or TASKS[t].restore_from_image]


@pytest.mark.parametrize(("task", "mode"), CASES, ids=[f"{t}-{m}" for t, m in CASES])
def test_notebook_and_worker_paths_agree(task, mode, one_thread):
    config = WorkerConfig.flat(input_url="", output_url="", task=task, task_settings=SETTINGS.get(task, {}),
                          mode=mode, model="tiny", checkpoint="random", steps=3, sigma_y=0.02, seed=5)
    worker = BatchRestorer(config, torch.device("cpu"))
    keys = ["a/x.png", "b.png"]
    raw = _inputs(task, mode)
    prepared = torch.stack([worker.prepare(im) for im in raw])
    assert worker.check_size(tuple(prepared.shape[1:])) is None
    got = worker.run(prepared, keys, None)

    res = ddnm.restore(raw, task, worker.model, mode=mode, steps=3, sigma_y=0.02, seed=5, keys=keys,
                       **SETTINGS.get(task, {}))
    for i, r in enumerate(got):
        assert torch.equal(r.restored, res.images[i])
        assert torch.equal(r.observation_view, res.observation_images[i])
        expected = {k: v for k, v in res.metrics[i].items() if k in METRICS}
        assert {k: v for k, v in r.metrics.items() if k in METRICS} == expected
        scored = set(METRICS) if mode == "evaluate" else {"consistency", "consistency_clamped"}
        assert set(expected) == scored
        assert r.metrics["model_calls"] == res.metrics[i]["model_calls"] == 3


def test_grey_low_res_photo_restores_in_the_notebook_as_in_a_job(one_thread):
    """A grey low-resolution photo for 4x SR: read as RGB by both paths (was a channel mismatch)."""
    grey = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    res = ddnm.restore(grey, "sr_avgpool", "tiny", mode="restore", scale=4, steps=2)
    assert res.images.shape == (1, 3, 16, 16) and res.metrics[0]["consistency"] < 1e-3


def test_cs_tasks_cannot_restore_from_an_image_and_say_so():
    config = WorkerConfig.flat(input_url="", output_url="", task="cs_walsh", mode="restore", model="tiny",
                          checkpoint="random")
    worker = BatchRestorer(config, torch.device("cpu"))
    assert "cannot read its observation from an image" in worker.check_size((3, SIZE, SIZE))
