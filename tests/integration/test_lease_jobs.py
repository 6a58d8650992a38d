"""One writer per output, end to end: a second run on an output in use exits 1 naming the holder; a
run with --wait-for-lease waits, then restores nothing twice (local disk and S3 through moto)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cluster import storage
from jobs.cli import main

pytestmark = pytest.mark.integration
N = 12


def _inputs(root: str, opts: dict) -> None:
    rng = np.random.default_rng(0)
    for i in range(N):
        img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        storage.write_bytes(storage.join(root, f"p{i:02d}.png"), buf.getvalue(), opts)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_on_one_output(where, tmp_path, s3_server, ray_local, capsys):
    if where == "s3":
        import s3fs
        s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("lease-it")
        root, opts = "s3://lease-it", {"endpoint_url": s3_server}
    else:
        root, opts = str(tmp_path), {}
    inp, out = f"{root}/in", f"{root}/out"
    _inputs(inp, opts)
    args = ["run", "--mode", "evaluate",
            "--input", inp, "--output", out, "--task", "sr_avgpool", "--set", "scale=2",
            "--model", "tiny", "--checkpoint", "random", "--steps", "8", "--shard-size", "2",
            "--gpus-per-worker", "1", "--incremental"]
    address = ray_local.get_runtime_context().gcs_address
    first = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args, "--workers", "1",
                              "--address", address],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not storage.exists(storage.join(out, "_lease.json"), opts):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        capsys.readouterr()
        assert main(args + ["--workers", "1"]) == 1  # refused at once, naming the holder
        err = capsys.readouterr().err
        assert f"ddnm-batch: error: output {out} is in use by another run: " in err
        assert f":{first.pid} (run " in err and "last heartbeat" in err
        while not storage.exists(storage.join(out, "_plan.json"), opts):
            time.sleep(0.05)
        main(["status", out, "--json"] + [f"--storage-option=endpoint_url={s3_server}"] * (where == "s3"))
        assert json.loads(capsys.readouterr().out)["lease"]["pid"] == first.pid  # status shows the holder
        assert first.poll() is None, "the first run should still hold the output"
        code = main(args + ["--workers", "1", "--wait-for-lease"])  # waits for the first run, then runs
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert code == 0
    err = capsys.readouterr().err
    assert "waiting for the run holding" in err and "nothing to run: no new images" in err
    manifest = json.loads(storage.read_bytes(storage.join(out, "_manifest.json"), opts))
    assert manifest["run"]["images"] == 0  # the second run restored nothing twice
    df = pd.read_parquet(storage.join(out, "metrics.parquet"), storage_options=opts or None)
    assert len(df) == N and df["key"].is_unique and (df["status"] == "ok").all()
    assert (df["attempt"] == 0).all()
    assert not storage.exists(storage.join(out, "_lease.json"), opts)


def test_worker_start_timeout_reaches_the_dispatcher(tmp_path, ray_local, capsys):
    """No worker can be placed (each asks for 3 GPUs, the cluster has 2): the run waits the given
    time, says what it waits for, then fails with exit 1 and one line."""
    _inputs(str(tmp_path / "in"), {})
    t0 = time.monotonic()
    code = main(["run", "--mode", "evaluate",
                 "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--task",
                 "sr_avgpool", "--set", "scale=2", "--model", "tiny", "--checkpoint", "random",
                 "--steps", "2", "--gpus-per-worker", "3", "--workers", "1", "--worker-start-timeout", "7"])
    waited = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 1 and waited >= 7
    assert "waiting for 1 workers: 0 ready (GPU nodes scaling up)" in err
    assert "ddnm-batch: error: no restore worker was ready within 7 s (--worker-start-timeout); " \
           "waited for 1, each needing 3 GPU and 1 CPU; the cluster has 2 CPU, 2 GPU" in err
    assert not os.path.exists(tmp_path / "out" / "_lease.json")
