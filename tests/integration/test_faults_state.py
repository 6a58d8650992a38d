"""Faults of the job's own state, with real driver processes on a local disk: a driver killed (SIGKILL of
its process group) at the instant it commits a shard, corrupt files on resume, leases from skewed
clocks, other hosts and dead processes.

Each case ends with every key exactly once in metrics.parquet, every image file with its row, and,
where a run is refused, one line naming the file and what to do (no traceback). The drivers join the
shared local Ray (`--address`), so a killed one takes no Ray with it and a rerun starts fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
N = 8


def _job(tmp_path: Path) -> tuple[list[str], list[str], Path]:
    """N 16 px inputs; (the run argv, the keys, the output folder): one image per shard."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rng = np.random.default_rng(0)
    keys = [f"p{i:02d}.png" for i in range(N)]
    for k in keys:
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(inp / k)
    argv = ["run", "--mode", "evaluate", "--input", str(inp), "--output", str(out), "--task", "sr_avgpool",
            "--set", "scale=2", "--model", "tiny", "--checkpoint", "random", "--steps", "4",
            "--shard-size", "1", "--workers", "1", "--gpus-per-worker", "1"]
    return argv, keys, out


def _driver(argv: list[str], ray_local) -> subprocess.Popen:
    """`ddnm-batch run` in a process group of its own, joined to the shared Ray."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    address = ray_local.get_runtime_context().gcs_address
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv, "--address", address], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _shards(out: Path) -> dict[str, bytes]:
    """The committed shard files (name -> bytes); a '.tmp-' file is a write not yet done."""
    folder = out / "shards"
    names = os.listdir(folder) if folder.is_dir() else []
    return {n: (folder / n).read_bytes() for n in names if n.endswith(".parquet") and not n.startswith(".")}


def _kill_at_commit(proc: subprocess.Popen, out: Path, before: int) -> dict[str, bytes]:
    """SIGKILL the driver's process group the moment a shard beyond the first `before` is committed."""
    deadline = time.monotonic() + 180
    try:
        while len(_shards(out)) <= before:
            assert proc.poll() is None, f"the driver ended first: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no shard was committed in 180 s"
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _shards(out)


def _check_final(out: Path, keys: list[str]) -> pd.DataFrame:
    """Every key once, ok; every image file has its row; the manifest is there, the lease gone."""
    df = pd.read_parquet(out / "metrics.parquet")
    assert sorted(df["key"]) == sorted(keys), "missing or duplicate rows"
    assert (df["status"] == "ok").all(), df["error"].tolist()
    images = out / "images"
    files = sorted(str(p) for p in images.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    assert files == sorted(df["output"]), "an image without its row, or a row without its image"
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".tmp-")]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["images"] == len(keys) and manifest["counts"]["shards_pending"] == 0
    assert not (out / "_lease.json").exists()
    return df


# ----------------------------------------------------------------- a driver that died on this host

def test_rerun_right_after_a_killed_driver_takes_its_lease_over(tmp_path, ray_local, capsys):
    """The killed driver's lease (ttl an hour) names a process that no longer runs on this host: the
    rerun, without --wait-for-lease, takes it over at once and finishes the job."""
    argv, keys, out = _job(tmp_path)
    proc = _driver([*argv, "--lease-ttl", "3600"], ray_local)
    committed = _kill_at_commit(proc, out, before=0)
    assert 1 <= len(committed) < N, "the driver should have died mid-job"
    assert json.loads((out / "_lease.json").read_text())["pid"] == proc.pid  # left behind
    capsys.readouterr()
    assert main([*argv, "--lease-ttl", "3600"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lease on {out} from " in err and f":{proc.pid} (run " in err
    assert "(its process is no longer running on this host)" in err, err
    df = _check_final(out, keys)
    assert (df["attempt"] == 0).all()
    for name, data in committed.items():  # skipped, not redone
        assert (out / "shards" / name).read_bytes() == data


# ------------------------------------------------------------------ killed at the instant of commit

def test_driver_killed_at_commit_three_times(tmp_path, ray_local):
    """Three drivers in a row are killed (SIGKILL of the process group) the moment they commit a
    shard, each rerun started at once; the fourth finishes. Committed shards are never redone."""
    argv, keys, out = _job(tmp_path)
    committed: dict[str, bytes] = {}
    for kill in range(3):
        now = _kill_at_commit(_driver(argv, ray_local), out, before=len(committed))
        assert len(committed) < len(now) < N, f"kill {kill}: the driver should have died mid-job"
        assert [n for n in committed if now[n] != committed[n]] == [], "a committed shard was redone"
        assert not (out / "metrics.parquet").exists() and not (out / "_manifest.json").exists()
        committed = now
    last = _driver(argv, ray_local)
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err[-3000:]
    assert "(its process is no longer running on this host)" in err
    df = _check_final(out, keys)
    assert (df["attempt"] == 0).all()
    assert json.loads((out / "_manifest.json").read_text())["run"]["images"] == N - len(committed)
    assert [n for n in committed if (out / "shards" / n).read_bytes() != committed[n]] == []


# ------------------------------------------------------------------- clock skew and other hosts

def _cli(argv: list[str]) -> tuple[int, str]:
    """`ddnm-batch ARGV` in a process of its own, to its end: (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    return done.returncode, done.stderr


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddnm-batch: error: output "), err
    return lines[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_lease(out: Path, **doc) -> None:
    """A lease as another run would have left it (run id, ttl 120 s, whatever `doc` says)."""
    (out / "_lease.json").write_text(json.dumps({"run_id": "f00d" * 8, "ttl": 120.0, **doc}))


def test_leases_from_skewed_clocks_and_other_hosts(tmp_path, ray_local, capsys):
    """On a finished job: a lease whose heartbeat is an hour ahead, and a fresh one from another host
    whose process is dead, are both refused (one line: why, what to do); the first is removed as the
    line says, the second is taken over once its ttl has passed; nothing is lost either way."""
    argv, keys, out = _job(tmp_path)
    assert main(argv) == 0
    lease = out / "_lease.json"
    dead = _dead_pid()

    _plant_lease(out, host="node-7", pid=dead, heartbeat=time.time() + 3600)
    code, err = _cli(argv)
    line = _one_error_line(err)
    assert code == 1 and re.search(r"last heartbeat 3\d\d\d s in the future", line), err
    assert "clocks of node-7 and of this host" in line and f"delete {lease} and run again" in line
    lease.unlink()  # as it says
    assert main(argv) == 0

    _plant_lease(out, host="node-7", pid=dead, heartbeat=time.time())
    code, err = _cli(argv)
    line = _one_error_line(err)
    assert code == 1 and re.search(rf"node-7:{dead} \(run f00df00d\), last heartbeat \d+ s ago: it ran on "
                                   "another host, so whether its process still runs cannot be checked from "
                                   r"here, and its lease holds until its heartbeat is 120 s old \(in \d+ s\)",
                                   line), err
    assert "wait with --wait-for-lease" in line and f"delete {lease} and run again" in line
    _plant_lease(out, host="node-7", pid=dead, heartbeat=time.time() - 200)  # its ttl has passed
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(rf"taking over the lease on {out} from node-7:{dead} \(run f00df00d\), last heartbeat "
                     r"2\d\d s ago \(expired after 120 s\)", err), err
    df = _check_final(out, keys)
    assert (df["attempt"] == 0).all()


# ------------------------------------------------------------------------ corrupt state on resume

def _rerun(argv: list[str], ray_local) -> str:
    """A resumed run in a process of its own that must succeed; its stderr (no traceback in it)."""
    code, err = _cli([*argv, "--address", ray_local.get_runtime_context().gcs_address])
    assert code == 0 and "Traceback" not in err, err[-3000:]
    return err


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_corrupt_job_files_on_resume(tmp_path, ray_local):
    """A truncated shard is run again; a truncated plan is rebuilt from the committed shards' rows; a
    truncated manifest is written again; a lease that is not JSON is taken over. Each says so in one
    line naming the file, and the job ends with every key once."""
    argv, keys, out = _job(tmp_path)
    assert main(argv) == 0
    shards = out / "shards"

    bad = shards / "shard-000002.parquet"
    _truncate(bad)
    err = _rerun(argv, ray_local)
    assert re.search(rf"{bad} is unreadable \(\d+ bytes, not Parquet: .+\): its shard runs again", err), err
    df = _check_final(out, keys)
    assert json.loads((out / "_manifest.json").read_text())["run"]["images"] == 1  # that shard alone
    assert df.set_index("key").loc[keys[2], "shard_id"] == 2

    for i in (5, 6):  # two shards not committed yet, then the plan lost
        (shards / f"shard-00000{i}.parquet").unlink()
    plan = out / "_plan.json"
    _truncate(plan)
    err = _rerun(argv, ray_local)
    assert re.search(rf"{plan} is unreadable \(not JSON, truncated\? JSONDecodeError: .+\): rebuilt from the "
                     r"6 committed shards' rows and the listing of .+ \(2 images in \d new shards\)",
                     err), err
    df = _check_final(out, keys)
    rebuilt = json.loads(plan.read_text())["shards"]
    assert sorted(k for s in rebuilt for k in s["keys"]) == sorted(keys)  # each key planned once
    assert {s["shard_id"] for s in rebuilt} >= {0, 1, 2, 3, 4, 7} and (df["shard_id"] > 7).sum() == 2

    manifest = out / "_manifest.json"
    _truncate(manifest)
    for command in (["status", str(out)], ["report", str(out)]):  # read it: one line, no traceback
        with contextlib.redirect_stderr(io.StringIO()) as said:
            assert main(command) == 1
        assert f"{manifest}: not JSON" in said.getvalue() and "run the job again" in said.getvalue()
        assert "Traceback" not in said.getvalue()
    err = _rerun(argv, ray_local)
    assert f"{manifest} is unreadable: it is written again at the end of this run" in err, err
    _check_final(out, keys)

    (out / "_lease.json").write_text('{"run_id": "1a2b3c4d", "host": "node-')
    err = _rerun(argv, ray_local)
    assert re.search(rf"{out / '_lease.json'} is not a lease \(JSONDecodeError: .+; a truncated or "
                     r"overwritten file\): this run takes it over", err), err
    assert len(_check_final(out, keys)) == N
