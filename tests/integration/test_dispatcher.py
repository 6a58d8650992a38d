"""The dispatcher on the shared local Ray (2 CPUs, 2 logical GPUs): every shard exactly once."""

from __future__ import annotations

import collections
import io
import time

import pytest
import torch

from cluster import images, storage
from cluster.config import WorkerConfig
from cluster.dispatcher import Dispatcher, WorkerStartError
from jobs.progress import Progress
from tests.integration._stubs import StubWorker, stub_worker

pytestmark = pytest.mark.integration


def _config(tmp_path, **kw) -> WorkerConfig:
    cfg = dict(input_url=str(tmp_path / "in"), output_url=str(tmp_path / "out"), storage_options={},
               mode="evaluate", task="sr_avgpool", task_settings={"scale": 2}, mask_url=None, model="tiny",
               checkpoint="random", dtype="fp32", steps=2, eta=0.85, sigma_y=0.0, travel=[1, 1, 1],
               samples=1, batch_size=2, seed=0, panels=False, threads=1)
    cfg.update(kw)
    return WorkerConfig.flat(**cfg)


def _images(root: str, n: int, size: int = 16) -> list[str]:
    keys = [f"d{i % 3}/img{i:03d}.png" for i in range(n)]
    g = torch.Generator().manual_seed(0)
    for k in keys:
        storage.write_bytes(storage.join(root, k), images.encode_png(torch.rand(3, size, size, generator=g)))
    return keys


def test_two_gpu_workers_process_every_shard_once(ray_local, tmp_path):
    keys = _images(str(tmp_path / "in"), 24)
    shards = [{"shard_id": i, "keys": keys[i * 3:(i + 1) * 3], "attempt": 0} for i in range(8)]
    seen = []
    d = Dispatcher(_config(tmp_path), num_workers=2, gpus_per_worker=1.0,
                   worker_cls=stub_worker(sleep=0.05))
    d.run(shards, seen.append)
    assert sorted(s["shard_id"] for s in seen) == list(range(8))
    rows = [r for s in seen for r in s["rows"]]
    assert collections.Counter(r["key"] for r in rows) == collections.Counter(keys)
    assert all(r["status"] == "ok" for r in rows)
    assert len({s["worker"] for s in seen}) == 2  # both logical GPUs were used
    assert (d.shards_done, d.images_ok, d.images_failed) == (8, 24, 0)
    for k in keys:
        assert (tmp_path / "out" / "images" / k).is_file()


def test_shard_that_kills_its_workers_comes_back_failed(ray_local, tmp_path):
    keys = _images(str(tmp_path / "in"), 4)
    inp = str(tmp_path / "in")
    storage.write_bytes(storage.join(inp, "die.png"), storage.read_bytes(storage.join(inp, keys[0])))
    shards = [{"shard_id": 0, "keys": keys[:2], "attempt": 0}, {"shard_id": 1, "keys": ["die.png", keys[2]],
              "attempt": 0}, {"shard_id": 2, "keys": keys[3:], "attempt": 0}]
    seen = []
    d = Dispatcher(_config(tmp_path), num_workers=1, gpus_per_worker=1.0, in_flight=1, max_attempts=2,
                   worker_cls=StubWorker)
    d.run(shards, seen.append)
    by_id = {s["shard_id"]: s for s in seen}
    assert sorted(by_id) == [0, 1, 2] and len(seen) == 3
    assert all(r["status"] == "ok" for i in (0, 2) for r in by_id[i]["rows"])
    bad = by_id[1]["rows"]
    assert [r["key"] for r in bad] == ["die.png", keys[2]] and all(r["status"] == "failed" for r in bad)
    assert bad[0]["error"].startswith("die.png: shard 1 failed 2 times: worker lost"), bad[0]["error"]
    assert d.workers_replaced == 2 and d.shards_failed == 1 and d.images_failed == 2


def test_worker_init_failure_is_a_clear_error(ray_local, tmp_path):
    cfg = _config(tmp_path, model="adm-256-uncond", checkpoint=str(tmp_path / "missing.pt"))
    d = Dispatcher(cfg, num_workers=1, gpus_per_worker=0.5)
    with pytest.raises(WorkerStartError, match="could not start a restore worker: .*missing.pt"):
        d.run([{"shard_id": 0, "keys": ["a.png"], "attempt": 0}], lambda s: None)


def test_missing_mask_file_fails_the_worker_init(tmp_path):
    cfg = _config(tmp_path, task_settings={"scale": 2, "mask": str(tmp_path / "no-such-mask.png")})
    with pytest.raises(ValueError, match="task_settings.mask: no such file .*no-such-mask.png"):
        StubWorker(cfg)


def test_workers_report_images_done_between_commits(tmp_path, ray_local):
    """One shard of 6 images, one image per batch: the running count moves before the shard commits."""
    keys = _images(str(tmp_path / "in"), 6)
    seen: list[tuple[float, int]] = []
    committed: list[float] = []
    d = Dispatcher(_config(tmp_path, batch_size=1), num_workers=1, gpus_per_worker=1.0,
                   worker_cls=stub_worker(sleep=0.4), progress_every=0.2,
                   on_progress=lambda n: seen.append((time.monotonic(), n)))
    d.run([{"shard_id": 0, "keys": keys}], lambda s: committed.append(time.monotonic()))
    before = [n for t, n in seen if t < committed[0]]
    assert any(0 < n < 6 for n in before), seen
    assert before == sorted(before)  # images only ever finish


def test_progress_counts_running_images_and_prints_between_commits():
    stream = io.StringIO()
    p = Progress(10, stream=stream, interval=0.0, tty=False)
    p.running(3)
    assert stream.getvalue().splitlines()[-1].startswith("[ddnm-batch] 3/10 images (0 failed)")
    p.update(4, 1)  # the shard of those 3 committed with 5 images
    p.running(1)
    p.close()
    assert stream.getvalue().splitlines()[-1].startswith("[ddnm-batch] 6/10 images (1 failed)")
