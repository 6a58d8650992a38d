"""Faults of the S3 storage under a job, with real driver processes: throttled (503 SlowDown / 500 on a
third of the requests), down (connections refused mid-job; 503 on everything from the start), and a
full bucket (a quota answer on every PUT, as Ceph and MinIO give it).

The job talks to the moto server through `tests.integration.s3proxy.Proxy` (``--storage-option
endpoint_url=PROXY``); the test reads and checks the bucket directly. Each case ends with every key
exactly once in metrics.parquet and every image file with its row; a run that cannot go on exits 1 with
one line naming the URL, the endpoint and the problem (no traceback), and a rerun once the storage is
back finishes the job. The drivers join the shared local Ray (`--address`).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cluster import storage
from tests.integration.s3proxy import QUOTA_ANSWERS, Proxy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "faults-s3"
N = 8


@pytest.fixture(scope="module")
def s3(s3_server):
    """s3fs straight to moto (not through the proxy): what the bucket really holds."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


@pytest.fixture
def proxy(s3_server):
    p = Proxy(s3_server)
    yield p
    p.close()


def _job(s3, proxy: Proxy) -> tuple[list[str], list[str], str]:
    """N 16 px inputs under a fresh prefix; (the run argv through the proxy, the keys, the output
    path in the bucket): one image per shard."""
    prefix = f"{BUCKET}/{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    keys = [f"p{i:02d}.png" for i in range(N)]
    for k in keys:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        s3.pipe(f"{prefix}/in/{k}", buf.getvalue())
    argv = ["run", "--mode", "evaluate", "--input", f"s3://{prefix}/in", "--output", f"s3://{prefix}/out",
            "--task", "sr_avgpool", "--set", "scale=2", "--model", "tiny", "--checkpoint", "random",
            "--steps", "4", "--shard-size", "1", "--workers", "1", "--gpus-per-worker", "1",
            "--storage-option", f"endpoint_url={proxy.url}"]
    return argv, keys, f"{prefix}/out"


def _driver(argv: list[str], ray_local) -> subprocess.Popen:
    """`ddnm-batch run` in a process of its own, joined to the shared Ray."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    address = ray_local.get_runtime_context().gcs_address
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv, "--address", address], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run(argv: list[str], ray_local) -> tuple[int, str]:
    proc = _driver(argv, ray_local)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _shards(s3, out: str) -> dict[str, bytes]:
    """The committed shard files (path -> bytes), read straight from moto."""
    folder = f"{out}/shards"
    return {p: s3.cat(p) for p in (s3.ls(folder, refresh=True) if s3.exists(folder) else [])}


def _error_line(err: str) -> str:
    """The run's one error line (progress lines may precede it); no traceback anywhere."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("ddnm-batch: error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-3000:]
    return lines[0]


def _check_final(s3, out: str, keys: list[str]) -> pd.DataFrame:
    """Every key once, ok; every image file has its row; the manifest is there, the lease gone."""
    s3.invalidate_cache()
    df = pd.read_parquet(io.BytesIO(s3.cat(f"{out}/metrics.parquet")))
    assert sorted(df["key"]) == sorted(keys), "missing or duplicate rows"
    assert (df["status"] == "ok").all(), df["error"].tolist()
    files = sorted(f"s3://{p}" for p in s3.find(f"{out}/images"))
    assert files == sorted(df["output"]), "an image without its row, or a row without its image"
    manifest = json.loads(s3.cat(f"{out}/_manifest.json"))
    assert manifest["counts"]["images"] == len(keys) and manifest["counts"]["shards_pending"] == 0
    assert not s3.exists(f"{out}/_lease.json")
    return df


# ---------------------------------------------------------------------------------------- throttled

def test_throttled_storage_finishes_the_job(s3, proxy, ray_local):
    """Every third GET / HEAD / PUT of the driver and the workers gets 503 SlowDown or 500
    InternalError: the retries absorb them, the job exits 0 with every key once."""
    argv, keys, out = _job(s3, proxy)
    proxy.fail_every(3)
    code, err = _run(argv, ray_local)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert proxy.faults >= 30, f"only {proxy.faults} faults: the test did not throttle the job"
    df = _check_final(s3, out, keys)
    assert (df["attempt"] == 0).all()  # absorbed by the storage retries, no shard ran twice


# ------------------------------------------------------------------------------------------- down

def test_storage_down_mid_job_then_back(s3, proxy, ray_local):
    """The storage refuses every connection after the first commit: the driver exits 1 with one line
    naming the endpoint and what to do, its committed shards kept; rerun once it is back: every key once.

    The time it takes is bounded by cluster.storage's retry policy (its docstring): one operation of a
    worker (its read or write), one of the driver, one for the lease; measured and printed here."""
    argv, keys, out = _job(s3, proxy)
    went_down = []
    proxy.after_put("/shards/", lambda: (proxy.down(), went_down.append(time.monotonic())))
    code, err = _run(argv, ray_local)
    seconds = time.monotonic() - went_down[0]
    assert code == 1, err[-3000:]
    line = _error_line(err)
    print(f"\n[time to fail] connections refused mid-job: exit 1 {seconds:.1f} s after: {line}")
    job = out.removesuffix("/out")  # a worker's read of an input, or a write of the job's
    assert f"s3://{job}/" in line and f"storage unreachable: {proxy.url} could not be reached" in line, line
    assert "run again once it answers (committed shards are kept)" in line, line
    committed = _shards(s3, out)
    assert len(committed) == 1, "the storage went down right after the first commit"
    assert not s3.exists(f"{out}/metrics.parquet")

    proxy.up()
    code, err = _run(argv, ray_local)
    assert code == 0, err[-3000:]
    assert "(its process is no longer running on this host)" in err  # its lease, left behind, taken over
    _check_final(s3, out, keys)
    assert {p: s3.cat(p) for p in committed} == committed  # not redone


def test_storage_answering_503_from_the_start(s3, proxy, ray_local):
    """A storage that answers 503 to everything: the run's first operation (reading the lease) is tried
    RETRY_ATTEMPTS x S3_RETRY_ATTEMPTS times, no more, then one line; then a rerun finishes."""
    argv, keys, out = _job(s3, proxy)
    proxy.unavailable()
    t0 = time.monotonic()
    code, err = _run(argv, ray_local)
    seconds = time.monotonic() - t0
    assert code == 1, err[-3000:]
    line = _error_line(err)
    print(f"\n[time to fail] 503 on everything: exit 1 {seconds:.1f} s after the start: {line}")
    lease = f"s3://{out}/_lease.json"
    assert line.startswith(f"ddnm-batch: error: {lease}: storage unreachable: {proxy.url} answered 503 "
                           f"on {storage.RETRY_ATTEMPTS} tries over "), line
    assert line.endswith("; run again once it answers (committed shards are kept)"), line
    tries = storage.RETRY_ATTEMPTS * storage.S3_RETRY_ATTEMPTS
    assert proxy.requests == {("HEAD", f"/{out}/_lease.json"): tries}, proxy.requests
    assert not s3.exists(out) or s3.find(out) == []

    proxy.unavailable(False)
    code, err = _run(argv, ray_local)
    assert code == 0, err[-3000:]
    _check_final(s3, out, keys)


# ------------------------------------------------------------------------------------------ quota

@pytest.mark.parametrize("store", sorted(QUOTA_ANSWERS))
def test_full_bucket_mid_job_then_lifted(s3, proxy, ray_local, store):
    """After the first commit every PUT is refused as `store` refuses a write to a full bucket: the run
    exits 1 at once (never retried: each refused object was tried once) with a line naming the output
    and the space problem; committed shards are kept; rerun once the quota is lifted: every key once."""
    argv, keys, out = _job(s3, proxy)
    proxy.after_put("/shards/", lambda: proxy.quota(store))
    code, err = _run(argv, ray_local)
    assert code == 1, err[-3000:]
    line = _error_line(err)
    print(f"\n[quota {store}] {line}")
    refusal = QUOTA_ANSWERS[store][1]
    assert f": s3://{out}/" in line and f"no space left: {proxy.url} refused the write" in line, line
    assert refusal in line and "free space or raise the quota there, then run again" in line, line
    refused = [n for (method, _), n in proxy.faulted.items() if method == "PUT"]
    assert refused and max(refused) == 1, proxy.faulted  # no PUT was tried twice
    committed = _shards(s3, out)
    assert len(committed) == 1, "every PUT was refused right after the first commit"

    proxy.quota(None)
    code, err = _run(argv, ray_local)
    assert code == 0, err[-3000:]
    _check_final(s3, out, keys)
    assert {p: s3.cat(p) for p in committed} == committed
