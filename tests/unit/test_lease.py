"""The output lease on a local disk: one holder, a clear refusal, takeover after expiry or when its
holder died on this host, lost-lease check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from jobs import lease as lease_mod
from jobs.errors import JobError
from jobs.lease import Lease


def test_second_run_is_refused_naming_the_holder(tmp_path):
    out = str(tmp_path / "out")
    a = Lease(out, {}, ttl=60, log=lambda m: None).acquire()
    try:
        doc = lease_mod.read(out, {})
        assert doc["run_id"] == a.run_id and doc["pid"] > 0
        held = (r"in use by another run: .+:\d+ \(run [0-9a-f]{8}\), last heartbeat \d+ s ago "
                r".*--wait-for-lease")
        with pytest.raises(JobError, match=held):
            Lease(out, {}, ttl=60).acquire()
        a.check()  # still ours
    finally:
        a.release()
    assert lease_mod.read(out, {}) is None  # released: the next run takes it at once
    Lease(out, {}, ttl=60).acquire().release()


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(tmp_path):
    out = str(tmp_path / "out")
    old = Lease(out, {}, ttl=0.5, heartbeat=3600, log=lambda m: None).acquire()  # beats never: "dies"
    time.sleep(0.7)
    said: list[str] = []
    new = Lease(out, {}, ttl=30, log=said.append).acquire()
    assert said and said[0].startswith(f"taking over the lease on {out} from ")
    assert "expired after 0 s" in said[0]
    with pytest.raises(JobError, match="lease was taken over by .*it stops without writing more"):
        old.check()
    new.check()
    old.release()  # must not delete the new holder's lease
    assert lease_mod.read(out, {})["run_id"] == new.run_id
    new.release()


def test_heartbeat_keeps_a_live_lease_from_expiring(tmp_path):
    out = str(tmp_path / "out")
    a = Lease(out, {}, ttl=0.6, heartbeat=0.1).acquire()
    try:
        time.sleep(1.0)
        with pytest.raises(JobError, match="in use by another run"):
            Lease(out, {}, ttl=0.6).acquire()
        beat = json.loads((tmp_path / "out" / "_lease.json").read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "out" / "_lease.json").read_text())["heartbeat"] > beat  # renewed
    finally:
        a.release()


def test_wait_for_lease_takes_it_when_the_holder_releases(tmp_path):
    out = str(tmp_path / "out")
    a = Lease(out, {}, ttl=60, log=lambda m: None).acquire()
    said: list[str] = []
    got: list[Lease] = []
    t = threading.Thread(target=lambda: got.append(Lease(out, {}, ttl=60, log=said.append).acquire(
        wait=True, poll=0.05)))
    t.start()
    time.sleep(0.3)
    assert not got and said and said[0].startswith("waiting for the run holding")
    a.release()
    t.join(timeout=10)
    assert got and lease_mod.read(out, {})["run_id"] == got[0].run_id
    got[0].release()


def test_racing_runs_get_exactly_one_lease(tmp_path):
    out = str(tmp_path / "out")
    results: list[object] = []
    barrier = threading.Barrier(6)

    def take():
        barrier.wait()
        try:
            results.append(Lease(out, {}, ttl=60).acquire())
        except JobError as e:
            results.append(e)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, Lease)]
    assert len(held) == 1 and len(results) == 6
    held[0].release()


# ----------------------------------------------------------------- a holder that died on this host

_HOLD = ("import sys, time; from jobs.lease import Lease; Lease(sys.argv[1], {}, ttl=3600, heartbeat=3600, "
         "log=print).acquire(); print('held', flush=True); time.sleep(600)")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(tmp_path):
    """Killed and not yet reaped (a zombie, as when a shell's child dies), then reaped: both times the
    pid runs no more, and a ttl of an hour does not make the next run wait."""
    out = str(tmp_path / "out")
    for reap in (False, True):
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, out], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobError, match="in use by another run"):  # alive: refused
            Lease(out, {}, ttl=3600).acquire()
        holder.kill()
        if reap:
            holder.wait()
        else:
            while lease_mod._process_start(holder.pid) is not None:  # until it is a zombie
                time.sleep(0.01)
        said: list[str] = []
        new = Lease(out, {}, ttl=3600, log=said.append).acquire()
        assert len(said) == 1 and said[0].startswith(f"taking over the lease on {out} from ")
        assert said[0].endswith("(its process is no longer running on this host)"), said
        assert f":{holder.pid} (run " in said[0]
        new.release()
        holder.wait()


def _left_by(out: str, **changes) -> dict:
    """A lease document as this process would write it, changed, left on `out` as if by a dead run."""
    doc = {**json.loads(Lease(out, {}, ttl=3600)._doc()), **changes}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "_lease.json"), "w") as f:
        json.dump(doc, f)
    return doc


def test_a_reused_pid_is_not_its_holder(tmp_path):
    """The pid runs, but it is another process (it started at another time): taken over."""
    out = str(tmp_path / "out")
    me = _left_by(out)
    with pytest.raises(JobError, match="in use by another run"):  # the very process: alive
        Lease(out, {}, ttl=3600).acquire()
    _left_by(out, pid_start=me["pid_start"] - 1)
    said: list[str] = []
    Lease(out, {}, ttl=3600, log=said.append).acquire().release()
    assert said and said[0].endswith("(its process is no longer running on this host)")


@pytest.mark.parametrize("changes", [{"host": "node-7"}, {"boot_id": "another-boot"},
                                     {"pid_ns": "pid:[1]"}, {"pid_start": None}])
def test_a_dead_pid_elsewhere_cannot_be_checked_and_is_honoured(tmp_path, changes):
    """Another host, another boot, another container's pid namespace, or a lease without the process's
    start time (an older version): the pid means nothing here, so the lease waits for its ttl."""
    out = str(tmp_path / "out")
    doc = _left_by(out, pid=_dead_pid(), **changes)
    assert not lease_mod.dead_here(doc)
    where = "it ran on another host" if "host" in changes else "another container or boot of this host"
    with pytest.raises(JobError, match=rf"in use by another run: .*{where}.*, so whether its process "
                       r"still runs cannot be checked from here, and its lease holds until its heartbeat "
                       r"is 3600 s old \(in 3[56]\d\d s\); wait with --wait-for-lease, or, if no run is "
                       rf"using this output, delete {out}/_lease.json and run again"):
        Lease(out, {}, ttl=3600).acquire()
    assert lease_mod.dead_here({**doc, **json.loads(Lease(out, {}, ttl=1)._doc()), "pid": doc["pid"]})


# ------------------------------------------------------------------------------------ clock skew

@pytest.mark.parametrize("host", ["node-7", None])
def test_a_heartbeat_in_the_future_is_refused_naming_the_clocks(tmp_path, host):
    """A heartbeat an hour ahead (the holder's clock is fast) is never taken for an expired one, even
    with a ttl of a second; the refusal says the clocks differ and which file to delete."""
    out = str(tmp_path / "out")
    doc = _left_by(out, heartbeat=time.time() + 3600, ttl=1, **({"host": host} if host else {}))
    before = (tmp_path / "out" / "_lease.json").read_bytes()
    with pytest.raises(JobError, match=r"last heartbeat 3[56]\d\d s in the future: a heartbeat in the "
                       rf"future, so the clocks of {doc['host']} and of this host \(.+\) differ .* expire "
                       r"here in 3[56]\d\d s\); fix the clocks \(NTP\), or if no run is using this output, "
                       rf"delete {out}/_lease.json"):
        Lease(out, {}, ttl=1).acquire()
    assert (tmp_path / "out" / "_lease.json").read_bytes() == before  # left alone


def test_a_lease_file_overwritten_with_garbage_stops_its_holder_cleanly(tmp_path):
    """Neither the holder's check nor `status` (lease.read) trips over a lease file that is not JSON."""
    out = str(tmp_path / "out")
    a = Lease(out, {}, ttl=60, log=lambda m: None).acquire()
    (tmp_path / "out" / "_lease.json").write_text('{"run_id": "1a2b')
    assert lease_mod.read(out, {}) is None
    with pytest.raises(JobError, match="lease was overwritten by a file that is not a lease; it stops"):
        a.check()
    a.release()
    assert (tmp_path / "out" / "_lease.json").read_text() == '{"run_id": "1a2b'  # not ours to delete
