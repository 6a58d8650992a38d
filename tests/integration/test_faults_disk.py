"""Faults of the output's disk, with real driver processes: a disk that fills up mid-job, and an output
that is read-only, on a small tmpfs mounted for the test (inputs stay on tmp_path).

Each case: the run stops with exit 1 and one line naming the output, what is wrong and what to do (no
traceback); committed shards are kept, byte for byte; no image file is left without its row and no
lease behind; once the space is freed (or the disk made writable) the same command finishes with
every key once. Mounting needs root (CI runs as root): without it the tests are skipped.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cluster import images, storage
from cluster.dispatcher import Dispatcher
from jobs.cli import main
from tests.integration._stubs import StubWorker
from tests.integration.test_faults_state import N, _check_final, _cli, _driver, _kill_at_commit, _shards
from tests.integration.test_faults_state import _job as _state_job
from tests.integration.test_worker import config

pytestmark = pytest.mark.integration
DISK_SIZE = "2m"  # a few hundred KB is the whole job; the ballast takes the rest


def _mount(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(["mount"], 127, "", str(exc))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of DISK_SIZE mounted at tmp_path/disk for the test, unmounted after (lazily if busy)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mnt))
    if done.returncode:
        pytest.skip(f"needs root (or CAP_SYS_ADMIN) to mount a small tmpfs: `mount -t tmpfs` said "
                    f"{done.stderr.strip() or done.returncode!r}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, mode: str) -> None:
    """Remount `mnt` ro or rw; a Ray worker of a killed driver may still hold a file open for writing
    for a moment (EBUSY), so try again for a while."""
    deadline = time.monotonic() + 60
    while (done := _mount("-o", f"remount,{mode}", str(mnt))).returncode:
        assert time.monotonic() < deadline, f"remount,{mode} of {mnt} failed: {done.stderr}"
        time.sleep(0.2)


def _job(tmp_path: Path, out: Path) -> tuple[list[str], list[str], Path]:
    """test_faults_state's job (N images, one per shard, inputs on tmp_path), its output at `out`."""
    argv, keys, _ = _state_job(tmp_path)
    argv[argv.index("--output") + 1] = str(out)
    return argv, keys, out


def _fill(path: Path) -> None:
    """Write `path` until its file system has no room left (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 65536)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def _wait_for_commits(proc, out: Path, n: int) -> None:
    deadline = time.monotonic() + 180
    while len(_shards(out)) < n:
        assert proc.poll() is None, f"the driver ended first: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{n} shards were not committed in 180 s"
        time.sleep(0.002)


def _error_line(err: str) -> str:
    """The run's one error line; no traceback anywhere on stderr."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("ddnm-batch: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _check_stopped(out: Path) -> None:
    """After a stopped run: every image file is the output of an ok row of a committed shard (and each
    ok row has its file); no half-written file; the lease released."""
    shards = [pd.read_parquet(out / "shards" / name) for name in _shards(out)]
    rows = pd.concat(shards) if shards else pd.DataFrame({"status": [], "output": []})
    images = out / "images"
    files = sorted(str(p) for p in images.rglob("*") if p.is_file()) if images.is_dir() else []
    assert files == sorted(rows.loc[rows["status"] == "ok", "output"]), "an image file without its row"
    assert not [p for p in out.rglob(".tmp-*")], "a half-written file was left"
    assert not (out / "_lease.json").exists(), "the lease was not released"


def _inputs(root: Path, n: int) -> list[str]:
    keys = [f"a{i}.png" for i in range(n)]
    for k in keys:
        storage.write_bytes(str(root / k), images.encode_png(torch.rand(3, 16, 16)))
    return keys


# ------------------------------------------------------------------- the worker and the dispatcher

def test_worker_on_a_full_disk_raises_instead_of_failing_every_image(tmp_path, small_disk):
    """No space is no image's fault: the shard raises StorageUnwritable (which stops the job) rather
    than returning a failed row per image, and leaves no file behind."""
    keys = _inputs(tmp_path / "in", 5)
    _fill(small_disk / "ballast")
    out = small_disk / "out"
    worker = StubWorker(config(str(tmp_path / "in"), str(out), batch_size=2))
    with pytest.raises(storage.StorageUnwritable, match=rf"^{out}/images/a\d\.png: no space left on device$"):
        worker.restore_shard({"shard_id": 0, "keys": keys})
    assert worker.progress() == {}
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_dispatcher_stops_at_an_unwritable_output(tmp_path, small_disk, ray_local):
    """A shard raising StorageUnwritable stops the run with it: not retried elsewhere, no shard
    delivered as failed rows, no actor replaced; the shards handed out stay in `unsettled`."""
    keys = _inputs(tmp_path / "in", 6)
    _fill(small_disk / "ballast")
    shards = [{"shard_id": i, "keys": keys[2 * i:2 * i + 2], "attempt": 0} for i in range(3)]
    seen: list[dict] = []
    d = Dispatcher(config(str(tmp_path / "in"), str(small_disk / "out")), num_workers=1, gpus_per_worker=1.0,
                   worker_cls=StubWorker)
    with pytest.raises(storage.StorageUnwritable, match="no space left on device"):
        d.run(shards, seen.append)
    assert seen == [] and d.workers_replaced == 0 and d.slots == []
    assert d.unsettled and set(d.unsettled) <= {0, 1, 2}


# ---------------------------------------------------------------------------------- whole jobs

def test_disk_full_mid_job(tmp_path, small_disk, ray_local, capsys):
    """The output's disk fills up after two shards are committed: the run stops at its next write
    (exit 1, one line: no space left, free space and run again), keeping its commits and leaving no
    image without its row; with the space freed, the same command finishes the job."""
    argv, keys, out = _job(tmp_path, small_disk / "out")
    proc = _driver(argv, ray_local)
    _wait_for_commits(proc, out, 2)
    ballast = small_disk / "ballast"
    _fill(ballast)
    at_fill = _shards(out)
    _, err = proc.communicate(timeout=180)
    line = _error_line(err)
    assert proc.returncode == 1, err[-3000:]
    assert re.fullmatch(rf"ddnm-batch: error: {out}/\S+: no space left on device; free space or raise the "
                        r"quota there, then run again \(committed shards are kept\)", line), line
    committed = _shards(out)
    assert 2 <= len(committed) < N, "the run should have stopped mid-job"
    assert [n for n, data in at_fill.items() if committed.get(n) != data] == [], "a commit was lost"
    _check_stopped(out)

    ballast.unlink()  # as the line says
    capsys.readouterr()
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    df = _check_final(out, keys)
    assert (df["attempt"] == 0).all()
    assert [n for n, data in committed.items() if (out / "shards" / n).read_bytes() != data] == []


def test_read_only_output(tmp_path, small_disk, ray_local):
    """A read-only output: before the first run, and after a partial run (a driver killed mid-job).
    Each run is refused with one line (read-only file system, make it writable and run again) and
    changes nothing; remounted read-write, the same command finishes the job."""
    argv, keys, out = _job(tmp_path, small_disk / "out")
    address = ["--address", ray_local.get_runtime_context().gcs_address]
    expected = (rf"ddnm-batch: error: {out}\S*: read-only file system; make it writable, then run again "
                r"\(committed shards are kept\)")

    _remount(small_disk, "ro")
    code, err = _cli([*argv, *address])
    assert code == 1 and re.fullmatch(expected, _error_line(err)), err[-3000:]
    assert not out.exists()

    _remount(small_disk, "rw")
    committed = _kill_at_commit(_driver(argv, ray_local), out, before=1)
    assert 2 <= len(committed) < N, "the driver should have died mid-job"
    _remount(small_disk, "ro")
    code, err = _cli([*argv, *address])
    assert code == 1 and re.fullmatch(expected, _error_line(err)), err[-3000:]

    _remount(small_disk, "rw")
    code, err = _cli([*argv, *address])
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "(its process is no longer running on this host)" in err  # the killed driver's lease
    df = _check_final(out, keys)
    assert (df["attempt"] == 0).all()
    assert [n for n, data in committed.items() if (out / "shards" / n).read_bytes() != data] == []
