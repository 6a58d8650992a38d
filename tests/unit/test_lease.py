"""The output lease on a local disk: one holder, a clear refusal, takeover after expiry, lost-lease check."""

from __future__ import annotations

import json
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
