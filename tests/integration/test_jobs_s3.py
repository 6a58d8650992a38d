"""End to end on a real S3 API (moto server) through s3fs with an endpoint URL, as a user pointing at
MinIO would, on the shared local Ray (2 CPUs, 2 logical GPUs) with the tiny random model (16 px).

One job of 40 inputs (3 of them corrupt) on 2 workers; then --incremental on its output; a driver
killed mid-job and resumed; a spec change refused; bad specs failing before any work.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import main

pytestmark = pytest.mark.integration

BUCKET = "jobs-it"
TINY = ["--model", "tiny", "--checkpoint", "random", "--steps", "2", "--set", "scale=4", "--mode", "evaluate"]
CORRUPT = {"c_empty.png": "empty file", "c_text.jpg": "not an image", "c_trunc.png": "truncated"}


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A smooth random colour image (a blurred noise field) as PNG bytes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


def put_inputs(fs, prefix: str, n: int, *, corrupt: bool = False, start: int = 0) -> list[str]:
    keys = []
    for i in range(start, start + n):
        key = f"img{i:03d}.png" if i % 3 else f"set{i % 2}/img{i:03d}.PNG"  # nested, mixed case
        fs.pipe(f"{BUCKET}/{prefix}/{key}", png_bytes(i))
        keys.append(key)
    if corrupt:
        good = png_bytes(999)
        fs.pipe(f"{BUCKET}/{prefix}/c_empty.png", b"")
        fs.pipe(f"{BUCKET}/{prefix}/c_text.jpg", b"this is a text file, not a JPEG\n")
        fs.pipe(f"{BUCKET}/{prefix}/c_trunc.png", good[: len(good) // 2])
        keys += list(CORRUPT)
    fs.pipe(f"{BUCKET}/{prefix}/README.txt", b"not an input")
    return keys


def read_metrics(fs, prefix: str) -> pd.DataFrame:
    return pd.read_parquet(f"s3://{BUCKET}/{prefix}/metrics.parquet",
                           storage_options={"endpoint_url": fs.client_kwargs.get("endpoint_url")
                                            or os.environ["AWS_ENDPOINT_URL"]})


@pytest.fixture(scope="module")
def ray_module(s3_server, _ray_session):
    """The shared local Ray of conftest's `ray_local`, for module-scoped fixtures."""
    import ray

    from cluster.runtime import init_ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) < 2:
        ray.shutdown()
    init_ray(num_cpus=2, num_gpus=2)
    return ray


@pytest.fixture(scope="module")
def e2e(s3, ray_module):
    """The 40-image job (37 good + 3 corrupt) on 2 workers, run once for the tests below."""
    keys = put_inputs(s3, "e2e/in", 37, corrupt=True)
    code = main(["run", "--input", f"s3://{BUCKET}/e2e/in", "--output", f"s3://{BUCKET}/e2e/out",
                 "--task", "sr_avgpool", *TINY, "--workers", "2", "--gpus-per-worker", "1",
                 "--shard-size", "6"])
    return keys, code


def test_forty_images_two_workers(s3, e2e):
    keys, code = e2e
    assert len(keys) == 40
    assert code == 3  # finished, with failed images recorded
    df = read_metrics(s3, "e2e/out")
    assert len(df) == 40 and df["key"].is_unique and sorted(df["key"]) == sorted(keys)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 37
    assert ok["psnr"].between(0, 100).all() and ok["ssim"].between(-1, 1).all()
    assert (ok["consistency"] >= 0).all() and (ok["consistency"] < 1e-2).all()  # y = A x0 by construction
    assert (ok["model_calls"] == 2).all() and (ok["out_height"] == 16).all()
    assert df["shard_id"].nunique() == 7 and ok["worker"].notna().all() and ok["node"].notna().all()
    for url in ok["output"]:
        img = Image.open(io.BytesIO(s3.cat(url)))
        assert img.size == (16, 16)
    images = s3.find(f"{BUCKET}/e2e/out/images")
    assert len(images) == 37  # every restored image once, nothing for the corrupt inputs


def test_corrupt_inputs_are_error_rows(s3, e2e):
    df = read_metrics(s3, "e2e/out").set_index("key")
    failed = df[df["status"] == "failed"]
    assert sorted(failed.index) == sorted(CORRUPT)
    for key, reason in CORRUPT.items():
        assert failed.loc[key, "error"].startswith(key) and reason in failed.loc[key, "error"]
        assert failed.loc[key, "output"] is None or pd.isna(failed.loc[key, "output"])


def test_manifest_written_last_and_status(s3, e2e, capsys):
    out = f"{BUCKET}/e2e/out"
    manifest = json.loads(s3.cat(f"{out}/_manifest.json"))
    shards = sorted(s3.ls(f"{out}/shards", refresh=True))
    assert manifest["files"]["shards"] == [p.removeprefix(out + "/") for p in shards]
    assert manifest["counts"] == {"images": 40, "ok": 37, "failed": 3, "planned_images": 40, "shards": 7,
                                  "shards_committed": 7, "shards_pending": 0}
    last = s3.info(f"{out}/_manifest.json")["LastModified"]
    for path in [*shards, f"{out}/metrics.parquet", f"{out}/_spec.json", f"{out}/_plan.json"]:
        assert s3.info(path)["LastModified"] <= last
    capsys.readouterr()
    assert main(["status", f"s3://{out}", "--json"]) == 3
    status = json.loads(capsys.readouterr().out)
    assert status["images"] == {"total": 40, "ok": 37, "failed": 3, "pending": 0}
    assert status["shards"]["pending"] == 0 and status["complete"] is True
    assert main(["report", f"s3://{out}"]) == 3
    assert "sr_avgpool" in capsys.readouterr().out


def test_incremental_restores_only_new(s3, e2e, capsys):
    before = read_metrics(s3, "e2e/out")
    new = put_inputs(s3, "e2e/in", 5, start=100)
    code = main(["run", "--input", f"s3://{BUCKET}/e2e/in", "--output", f"s3://{BUCKET}/e2e/out",
                 "--task", "sr_avgpool", *TINY, "--workers", "2", "--gpus-per-worker", "1",
                 "--shard-size", "6", "--incremental"])
    assert code == 3  # the 3 corrupt inputs of the first run are still failed rows
    manifest = json.loads(s3.cat(f"{BUCKET}/e2e/out/_manifest.json"))
    assert manifest["run"]["images"] == 5 and manifest["run"]["new_keys"] == 5
    df = read_metrics(s3, "e2e/out")
    assert len(df) == 45 and df["key"].is_unique
    assert set(df["key"]) - set(before["key"]) == set(new)
    fresh = df[df["key"].isin(new)]
    assert (fresh["status"] == "ok").all() and fresh["shard_id"].min() == 7
    kept = df[~df["key"].isin(new)].set_index("key").sort_index()
    assert kept["seconds"].equals(before.set_index("key").sort_index()["seconds"])  # not run again
    # a second incremental run finds nothing new and runs nothing
    assert main(["run", "--input", f"s3://{BUCKET}/e2e/in", "--output", f"s3://{BUCKET}/e2e/out",
                 "--task", "sr_avgpool", *TINY, "--incremental"]) == 3
    assert json.loads(s3.cat(f"{BUCKET}/e2e/out/_manifest.json"))["run"]["images"] == 0


def test_spec_change_refused(s3, e2e, capsys):
    capsys.readouterr()
    code = main(["run", "--input", f"s3://{BUCKET}/e2e/in", "--output", f"s3://{BUCKET}/e2e/out",
                 "--task", "sr_avgpool", *TINY, "--steps", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "different spec" in err and "steps: 2 -> 3" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1


def test_driver_killed_then_resumed(s3, ray_local, capsys):
    """Killed mid-job: its lease names a process no longer running on this host, so the resumed run
    takes it over at once (its --lease-ttl of an hour plays no part)."""
    n, per_shard = 20, 2  # many small shards, so the kill lands mid-job even on a fast machine
    put_inputs(s3, "kill/in", n)
    out = f"{BUCKET}/kill/out"
    args = ["run", "--input", f"s3://{BUCKET}/kill/in", "--output", f"s3://{out}", "--task", "sr_avgpool",
            *TINY, "--steps", "6", "--gpus-per-worker", "1", "--shard-size", str(per_shard)]
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args, "--workers", "1", "--address", address,
                             "--lease-ttl", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if s3.exists(f"{out}/shards") and s3.ls(f"{out}/shards", refresh=True):
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    committed = {p: s3.cat(p) for p in s3.ls(f"{out}/shards", refresh=True)}
    assert 1 <= len(committed) < n // per_shard, "the driver should have died mid-job"
    assert not s3.exists(f"{out}/_manifest.json")

    capsys.readouterr()
    code = main([*args, "--workers", "2"])  # in-process resume at once, more workers
    assert code == 0
    err = capsys.readouterr().err
    assert "taking over the lease on s3://" in err, err
    assert "(its process is no longer running on this host)" in err, err
    assert not s3.exists(f"{out}/_lease.json")  # released at the end
    manifest = json.loads(s3.cat(f"{out}/_manifest.json"))
    assert manifest["run"]["images"] == n - per_shard * len(committed)  # only the unfinished shards ran
    for path, data in committed.items():
        assert s3.cat(path) == data  # committed shards untouched
    df = read_metrics(s3, "kill/out")
    assert len(df) == n and df["key"].is_unique and (df["status"] == "ok").all()
    assert len(s3.find(f"{out}/images")) == n


@pytest.mark.parametrize("case,extra,message", [
    ("unknown task", ["--task", "sr_magic"], r"task='sr_magic': unknown task; known tasks:"),
    ("scale", ["--task", "sr_avgpool", "--set", "scale=32"], r"sr_avgpool on the input images \(16x16"),
    ("missing mask", ["--task", "inpaint", "--set", f"mask=s3://{BUCKET}/masks/nomask.png"],
     rf"--set mask=s3://{BUCKET}/masks/nomask.png: not found"),
    ("bucket", ["--task", "sr_avgpool", "--input", "s3://no-such-bucket-xyz/in"],
     r"input s3://no-such-bucket-xyz/in: not found"),
])
def test_bad_specs_fail_before_any_work(s3, capsys, case, extra, message):
    import re

    if not s3.exists(f"{BUCKET}/bad/in"):
        put_inputs(s3, "bad/in", 2)
    out = f"{BUCKET}/bad/out-{case.replace(' ', '-')}"
    argv = ["run", "--input", f"s3://{BUCKET}/bad/in", "--output", f"s3://{out}", "--model", "tiny",
            "--checkpoint", "random", "--steps", "2", "--mode", "evaluate", *extra]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1 and err.startswith("ddnm-batch: error:")
    assert not s3.exists(out) or s3.find(out) == []

