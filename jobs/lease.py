"""One writer per output: a lease object, OUTPUT/_lease.json, held by the run that plans and commits.

The lease names its holder (host, pid, run id, Ray job id when the driver runs as a Ray job; the
machine's boot id, its pid namespace and the process's start time) and carries a heartbeat the holder
renews every `heartbeat` seconds. Another run finds it and either exits with one line naming the holder
and how long ago it beat, or waits (``--wait-for-lease``). A lease whose last heartbeat is older than
its ``ttl`` belongs to a run that died: it is taken over, with a log line. So is, at once, a lease whose
holder ran on this machine (same host name, boot id and pid namespace) and is no longer running: its pid
is gone, a zombie, or another process's (a different start time: pid reuse).
The holder checks that it still holds the lease before every write of the plan, the final table and
the manifest, and before committing each shard; a run that lost it stops (exit 1).

What it guarantees depends on the store (``cluster.storage.write_if``):
* local disk (also NFS with working locks) and S3 (conditional PUT: If-None-Match / If-Match, which
  AWS S3 and MinIO implement): taking and renewing are compare-and-swap, so two runs can never both
  hold it;
* other stores: check-then-write, so two runs started within the same moment could both take it; the
  re-check before every plan write still stops the loser at its first write.
Expiry compares the holder's wall clock (in the heartbeat) with the reader's: clocks skewed by more
than the ttl defeat it. A heartbeat in the future is never taken for an expired one: the refusal says
the clocks differ. A lease from another host (or container) cannot have its process checked, so it
is honoured until its ttl, and the refusal says so.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from cluster import storage
from jobs.errors import JobError

LEASE_FILE = "_lease.json"


def describe(doc: dict[str, Any], now: float | None = None) -> str:
    """'host:pid (run 1a2b3c4d, Ray job 02000000), last heartbeat 12 s ago'."""
    age = (now or time.time()) - float(doc.get("heartbeat", 0))
    job = f", Ray job {doc['ray_job_id']}" if doc.get("ray_job_id") else ""
    beat = f"{-age:.0f} s in the future" if age < -1 else f"{max(age, 0):.0f} s ago"
    run = str(doc.get("run_id"))[:8]
    return f"{doc.get('host')}:{doc.get('pid')} (run {run}{job}), last heartbeat {beat}"


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, field 22 of /proc/PID/stat); None when no
    such process runs (none, or a zombie); -1 when it exists but /proc does not show it (hidepid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return -1
    state, *rest = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return None if state in ("Z", "X") else int(rest[18])


def _machine() -> dict[str, Any]:
    """What makes a pid meaningful: this boot of this machine, and this pid namespace (containers
    sharing a host name, as with host networking, have pid namespaces of their own). {} off Linux."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return {"boot_id": boot, "pid_ns": os.readlink("/proc/self/ns/pid")}
    except OSError:
        return {}


def _checkable(doc: dict[str, Any]) -> bool:
    """Whether the lease was written on this machine (host name, boot id), in this pid namespace, with
    its process's start time: only then does its pid say whether its holder still runs."""
    machine = _machine()
    if not machine or doc.get("host") != socket.gethostname() or doc.get("pid_start") is None:
        return False
    return all(doc.get(k) == v for k, v in machine.items()) and str(doc.get("pid")).isdigit()


def dead_here(doc: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this machine, in this pid namespace, and runs no more.

    False whenever that cannot be told (another host, a lease without these fields, no /proc): such
    a lease is honoured until its ttl."""
    if not _checkable(doc):
        return False
    now = _process_start(int(doc["pid"]))
    return now is None or (now != -1 and now != int(doc["pid_start"]))


def _refusal(output: str, doc: dict[str, Any], age: float, ttl: float) -> str:
    """The one line of a run refused because `doc` holds the output: who, and what the user can do."""
    held = f"output {output} is in use by another run: {describe(doc)}"
    delete = f"if no run is using this output, delete {storage.join(output, LEASE_FILE)} and run again"
    if age < -1:
        return (f"{held}: a heartbeat in the future, so the clocks of {doc.get('host')} and of this host "
                f"({socket.gethostname()}) differ and this run cannot tell whether that run still lives (its "
                f"lease would expire here in {ttl - age:.0f} s); fix the clocks (NTP), or {delete}")
    if not _checkable(doc):
        where = ("it ran on another host" if doc.get("host") != socket.gethostname() else
                 "it was written in another container or boot of this host, or by an older version")
        return (f"{held}: {where}, so whether its process still runs cannot be checked from here, and its "
                f"lease holds until its heartbeat is {ttl:.0f} s old (in {max(ttl - age, 0):.0f} s); wait "
                f"with --wait-for-lease, or, {delete}")
    return (f"{held} (its lease expires {ttl:.0f} s after its last heartbeat); wait for it with "
            "--wait-for-lease, or give another --output")


def read(output: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The current lease document, or None (also when the file is not a JSON object)."""
    got = storage.read_tagged(storage.join(output, LEASE_FILE), options)
    return None if got is None else _loads(got[0])


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _lost_to(current: tuple[bytes, str] | None) -> str:
    """How a holder lost its lease, given what the lease file holds now."""
    if current is None:
        return "deleted"
    holder = _loads(current[0])
    return f"taken over by {describe(holder)}" if holder else "overwritten by a file that is not a lease"


class Lease:
    """The lease of one run on one output. Use :meth:`acquire`, then :meth:`check`, :meth:`release`."""

    def __init__(self, output: str, options: dict[str, Any], *, ttl: float, heartbeat: float | None = None,
                 log: Callable[[str], None] = print) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        self.url = storage.join(output, LEASE_FILE)
        self.output, self.options, self.ttl = output, options, float(ttl)
        self.heartbeat = heartbeat if heartbeat is not None else max(0.5, self.ttl / 4)
        self.log = log
        self.run_id = uuid.uuid4().hex
        self._tag: str | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- take
    def _doc(self) -> bytes:
        now = time.time()
        return json.dumps({
            "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), **_machine(),
            "ray_job_id": os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID"),
            "heartbeat": now, "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "ttl": self.ttl,
        }, indent=2).encode()

    def acquire(self, *, wait: bool = False, poll: float = 2.0) -> Lease:
        """Take the lease (taking over an expired one); JobError naming the holder if it is held and
        `wait` is False, else wait until it is free or expires. Starts the heartbeat."""
        announced = None
        while True:
            current = storage.read_tagged(self.url, self.options)
            if current is None:
                if self._write(None):
                    break
                continue  # someone created it between our read and our write: look again
            data, tag = current
            try:
                holder = json.loads(data)
                age = time.time() - float(holder["heartbeat"])
                ttl = float(holder.get("ttl") or self.ttl)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # no holder can be named; whoever wrote it lost it anyway: its tag no longer matches,
                # so it stops at its next check
                self.log(f"{self.url} is not a lease ({type(exc).__name__}: {exc}; a truncated or "
                         "overwritten file): this run takes it over")
                if self._write(tag):
                    break
                continue
            why = (f"expired after {ttl:.0f} s" if age > ttl else
                   "its process is no longer running on this host" if dead_here(holder) else None)
            if why:
                self.log(f"taking over the lease on {self.output} from {describe(holder)} ({why})")
                if self._write(tag):
                    break
                continue
            if not wait:
                raise JobError(_refusal(self.output, holder, age, ttl))
            if announced != holder.get("run_id"):
                self.log(f"waiting for the run holding {self.output}: {describe(holder)}")
                announced = holder.get("run_id")
            time.sleep(poll)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="ddnm-lease")
        self._thread.start()
        return self

    def _write(self, expected: str | None) -> bool:
        data = self._doc()
        if not storage.write_if(self.url, data, self.options, tag=expected):
            return False
        now = storage.read_tagged(self.url, self.options)  # our own version's tag (an ETag on S3)
        if now is None or json.loads(now[0]).get("run_id") != self.run_id:
            return False
        self._tag = now[1]
        return True

    # ------------------------------------------------------------------------------------ heartbeat
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                if self._lost:
                    return
                try:
                    if not self._write(self._tag):
                        self._lost = _lost_to(storage.read_tagged(self.url, self.options))
                except Exception as exc:  # storage trouble: try again at the next beat, expire if it lasts
                    self.log(f"lease heartbeat failed ({type(exc).__name__}: {exc}); retrying")

    def check(self) -> None:
        """JobError if this run no longer holds the lease (before any write of the plan or results)."""
        with self._lock:
            if self._lost is None:
                current = storage.read_tagged(self.url, self.options)
                if current is None or current[1] != self._tag:
                    self._lost = _lost_to(current)
            if self._lost:
                raise JobError(f"output {self.output}: this run's lease was {self._lost}; it stops "
                               "without writing more (committed shards are kept)")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if this run still holds it.

        A storage failure here is logged, not raised: the run is ending (often because of that same
        failure, whose message must not be replaced), and a lease left behind is taken over by the next
        run, at once on this host (its process is gone), else after its ttl."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._tag is not None and not self._lost:
                try:
                    storage.delete_if(self.url, self.options, tag=self._tag)
                except storage.StorageError as exc:
                    self.log(f"could not delete {self.url} ({exc.reason}); the next run takes it over")
            self._tag = None
