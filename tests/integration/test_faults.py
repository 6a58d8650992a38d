"""Faults mid-job: a killed actor, and a worker node removed from a multi-node cluster.

Whatever dies, every key comes back exactly once (no missing or duplicate rows) and every output
image exists once. The node test runs its own ray.cluster_utils.Cluster (head + 2 worker nodes, fast
health check), so it shuts the shared local Ray down first; `ray_local` restarts it lazily.
"""

from __future__ import annotations

import collections
import os

import pytest
import ray
import torch

from cluster import images, storage
from cluster.config import WorkerConfig
from cluster.dispatcher import Dispatcher
from cluster.runtime import shutdown_ray
from cluster.worker import RestoreWorker
from tests.integration._stubs import stub_worker

pytestmark = pytest.mark.integration


def _job(tmp_path, n_shards: int, per_shard: int, **kw):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    keys = [f"k{i:03d}.png" for i in range(n_shards * per_shard)]
    g = torch.Generator().manual_seed(3)
    for k in keys:
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, 16, 16, generator=g)))
    cfg = dict(input_url=inp, output_url=out, storage_options={}, mode="evaluate", task="sr_avgpool",
               task_settings={"scale": 2}, mask_url=None, model="tiny", checkpoint="random", dtype="fp32",
               steps=3, eta=0.85, sigma_y=0.0, travel=[1, 1, 1], samples=1, batch_size=2, seed=0,
               panels=False, threads=1)
    cfg = WorkerConfig.flat(**{**cfg, **kw})
    shards = [{"shard_id": i, "keys": keys[i * per_shard:(i + 1) * per_shard], "attempt": 0}
              for i in range(n_shards)]
    return cfg, shards, keys


def _check_exactly_once(summaries: list[dict], keys: list[str], out: str) -> None:
    ids = [s["shard_id"] for s in summaries]
    assert sorted(ids) == sorted(set(ids)), f"a shard was delivered twice: {ids}"
    rows = [r for s in summaries for r in s["rows"]]
    counts = collections.Counter(r["key"] for r in rows)
    assert counts == collections.Counter(keys), "missing or duplicate rows"
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    # one file per key; a ".tmp-" file can be left only by a process killed inside a local write
    files = sorted(f for f in os.listdir(os.path.join(out, "images")) if not f.startswith(".tmp-"))
    assert files == sorted(keys)


def test_killed_actor_mid_job(ray_local, tmp_path):
    cfg, shards, keys = _job(tmp_path, n_shards=8, per_shard=2)
    d = Dispatcher(cfg, num_workers=2, gpus_per_worker=1.0, worker_cls=RestoreWorker)
    seen: list[dict] = []
    killed = []

    def on_result(summary):
        seen.append(summary)
        if not killed:
            victim = max(d.slots, key=lambda s: len(s.inflight))  # one that has shards in flight
            assert victim.inflight
            killed.append(victim.info["worker"])
            ray.kill(victim.actor, no_restart=True)

    d.run(shards, on_result)
    _check_exactly_once(seen, keys, cfg.output_url)
    assert d.workers_replaced >= 1  # (a result the victim finished just before the kill may be kept)


@pytest.fixture
def three_node_cluster():
    """Head (no GPU) + 2 worker nodes with 1 CPU and 1 logical GPU each; fast node-death detection."""
    from ray.cluster_utils import Cluster

    from cluster.runtime import local_cluster_env

    shutdown_ray()
    local_cluster_env()
    for attempt in range(2):  # a raylet gets 30 s to register: on an overloaded machine, try twice
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(num_cpus=1, num_gpus=0, include_dashboard=False, _system_config={
                "health_check_period_ms": 500, "health_check_failure_threshold": 3})
            workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
            break
        except Exception:
            cluster.shutdown()
            if attempt:
                raise
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_removed_node_mid_job(three_node_cluster, tmp_path):
    cluster, workers = three_node_cluster
    cfg, shards, keys = _job(tmp_path, n_shards=8, per_shard=2)
    d = Dispatcher(cfg, num_workers=2, gpus_per_worker=1.0, worker_cls=stub_worker(sleep=0.4),
                   memory=200 * 2**20)
    seen: list[dict] = []
    removed = []

    def on_result(summary):
        seen.append(summary)
        if not removed:
            busy = {s.info["node"] for s in d.slots if s.inflight and s.ready}
            node = next(n for n in workers if n.node_id[:12] in busy)
            removed.append(node.node_id)
            cluster.remove_node(node, allow_graceful=False)

    d.run(shards, on_result)
    _check_exactly_once(seen, keys, cfg.output_url)
    assert d.workers_replaced >= 1
