"""Keep restore actors busy, replace the dead ones and re-queue their shards.

Not ``ray.util.ActorPool``: that pool neither replaces dead actors nor resubmits their work
(REFERENCE.md section 6). Here each actor has up to `in_flight` shards queued (the actor runs two at a
time, see `cluster.worker`), results are taken with ``ray.wait`` in completion order and handed to
``on_result`` on the driver thread.

Failures:
- a shard's task raises (a bug in the worker, not a bad image: those are rows): the shard is re-queued
  with ``attempt + 1``, the actor is kept;
- a shard's task raises a `cluster.storage.StorageUnusable` (the storage unreachable, full or
  read-only, after the retries of `cluster.storage`): `run` raises it at once. Every worker shares that
  storage, so another attempt elsewhere would fail the same way, only later; the caller's committed
  shards stand. The actors are gone when `run` raises, and `unsettled` names the shards whose images
  may be partly written;
- the actor dies or becomes unreachable (process killed, node removed, out of memory): it is killed
  for good, a new actor is started in its place, and every shard it had in flight is re-queued with
  ``attempt + 1`` (to any live actor; a replacement that cannot be placed yet does not hold work);
- a shard that reaches `max_attempts` comes back as a summary whose rows are all failed with the reason;
- an actor whose ``__init__`` raises (unknown model, bad checkpoint) stops the run with `WorkerStartError`.

Retries are at-least-once: a re-queued shard may have written some images before its actor died;
the worker's writes are single writes to deterministic keys, so the retry overwrites them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError, RayTaskError

from cluster.config import WorkerConfig
from cluster.rows import fail
from cluster.storage import StorageUnusable
from cluster.worker import RestoreWorker, shard_rows

DEFAULT_WORKER_MEMORY = 2 * 2**30
"""Host memory reserved per actor when none is given: the model's weights on load, decoded and
encoded images of two shards, torch and Ray's own worker (about 0.6 GiB with a small model)."""


class WorkerStartError(RuntimeError):
    """A restore worker could not be created (its ``__init__`` raised, or none could be placed)."""


@dataclass(eq=False)
class _Slot:
    """One actor and the shards it has in flight (object ref -> shard)."""

    actor: object
    ready_ref: object
    ready: bool = False
    info: dict = field(default_factory=dict)
    inflight: dict = field(default_factory=dict)
    progress_ref: object = None
    finished: int = 0  # images its in-flight shards had finished at the last progress answer


class Dispatcher:
    """Run shards on `num_workers` restore actors.

    Args:
        config: the job's `WorkerConfig`, sent once to each actor.
        num_workers: actors to keep alive.
        gpus_per_worker: GPUs per actor, fractional allowed (0 for CPU-only actors).
        cpus_per_worker: CPUs reserved per actor (decoding and encoding run there too).
        memory: bytes of memory reserved per actor (Ray's ``memory`` resource, a scheduling hint);
            None reserves `DEFAULT_WORKER_MEMORY`, 0 reserves nothing.
        in_flight: shards queued per actor (2: the next one is decoded while the current one samples).
        max_attempts: actors a shard may be tried on before it is given up as failed.
        worker_cls: the actor class (a `RestoreWorker` subclass; tests use stand-ins).
        start_timeout: seconds to wait with work pending and no live actor before giving up.
        on_progress: ``on_progress(finished)`` every `progress_every` seconds with the images the actors
            have finished in shards not delivered yet (between shard commits).
        on_wait: ``on_wait(ready, wanted, seconds)`` about once a second while work is pending and no
            actor can take it (none ready yet: GPU nodes scaling up, images pulling, weights loading).

    Progress counters, updated before each ``on_result`` call: `shards_done`, `shards_failed`
    (given up after `max_attempts`), `images_ok`, `images_failed`, `workers_replaced`; and
    `first_ready_at` / `ready_times` (``time.monotonic()`` when the first / each actor could take work,
    for rates and ETAs); `unsettled` (shard id -> shard) the shards given to an actor whose results have
    not been through ``on_result`` (yet).
    """

    def __init__(self, config: WorkerConfig, *, num_workers: int, gpus_per_worker: float = 1.0,
                 cpus_per_worker: float = 1, memory: int | None = None, in_flight: int = 2,
                 max_attempts: int = 3, worker_cls: type = RestoreWorker, start_timeout: float = 600.0,
                 on_wait: Callable[[int, int, float], None] | None = None,
                 on_progress: Callable[[int], None] | None = None, progress_every: float = 2.0):
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        if gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
        if cpus_per_worker < 0:
            raise ValueError(f"cpus_per_worker must be >= 0, got {cpus_per_worker!r}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        self.config = config
        self.num_workers = num_workers
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.start_timeout = start_timeout
        self.on_wait = on_wait
        self.on_progress, self.progress_every = on_progress, progress_every
        self._polled = 0.0
        options = {"num_gpus": gpus_per_worker, "num_cpus": cpus_per_worker, "max_concurrency": 3,
                   "max_restarts": 0, "max_task_retries": 0}
        if memory is None:
            memory = DEFAULT_WORKER_MEMORY
        if memory < 0:
            raise ValueError(f"memory must be >= 0 bytes, got {memory!r}")
        if memory:
            options["memory"] = int(memory)
        self._actor_cls = ray.remote(worker_cls).options(**options)
        self._options = options
        self.slots: list[_Slot] = []
        self.shards_done = self.shards_failed = self.images_ok = self.images_failed = 0
        self.workers_replaced = 0
        self.first_ready_at: float | None = None  # time.monotonic() when the first actor was ready
        self.ready_times: list[float] = []  # time.monotonic() of every actor becoming ready
        self.unsettled: dict[int, dict] = {}
        self._config_ref = None

    # ------------------------------------------------------------------------------------------ run
    def run(self, shards: Iterable[dict], on_result: Callable[[dict], None]) -> None:
        """Restore every shard once; ``on_result(summary)`` per shard in completion order."""
        pending = collections.deque(
            {"shard_id": s["shard_id"], "keys": list(s["keys"]), "attempt": int(s.get("attempt", 0))}
            for s in shards)
        if not pending:
            return
        self._config_ref = ray.put(self.config)
        self.slots = [self._start() for _ in range(min(self.num_workers, len(pending)))]
        idle_since = time.monotonic()
        try:
            while pending or any(s.inflight for s in self.slots):
                self._assign(pending)
                waiting = {}
                for s in self.slots:
                    waiting.update({ref: s for ref in s.inflight})
                    if not s.ready:
                        waiting[s.ready_ref] = s
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
                for ref in done:
                    slot = waiting[ref]
                    if slot not in self.slots:
                        continue  # its actor was replaced while this result was in the same batch
                    if ref is slot.ready_ref and not slot.ready:
                        self._on_ready(slot)
                    else:
                        self._on_shard(slot, ref, pending, on_result)
                if any(s.ready for s in self.slots) or any(s.inflight for s in self.slots):
                    idle_since = time.monotonic()
                    self._poll_progress()
                    continue
                waited = time.monotonic() - idle_since
                if self.on_wait is not None:
                    self.on_wait(0, len(self.slots), waited)
                if waited > self.start_timeout:
                    raise WorkerStartError(
                        f"no restore worker was ready within {self.start_timeout:.0f} s "
                        f"(--worker-start-timeout); waited for {len(self.slots)}, each needing "
                        f"{self._options['num_gpus']:g} GPU and {self._options['num_cpus']:g} CPU; "
                        f"the cluster has {_resources(ray.cluster_resources())}")
        finally:
            running = [ref for s in self.slots for ref in s.inflight]
            for s in self.slots:
                ray.kill(s.actor, no_restart=True)
            if running:  # their tasks end when the actors are gone: no write of theirs comes later
                ray.wait(running, num_returns=len(running), timeout=30)
            self.slots = []

    # ------------------------------------------------------------------------------------- internals
    def _poll_progress(self) -> None:
        """Ask every busy actor how far its shards are (at most every `progress_every` s); report the
        answers that arrived by the next poll. A slow or dead actor only delays its own count."""
        now = time.monotonic()
        if self.on_progress is None or now - self._polled < self.progress_every:
            return
        self._polled = now
        finished = 0
        for s in self.slots:
            ref = s.progress_ref
            if ref is not None and ray.wait([ref], timeout=0)[0]:
                try:
                    counts = ray.get(ref)
                    running = {int(sh["shard_id"]) for sh in s.inflight.values()}
                    s.finished = sum(n for sid, n in counts.items() if int(sid) in running)
                except RayError:
                    s.finished = 0
                s.progress_ref = None
            if s.progress_ref is None and s.ready and s.inflight:
                s.progress_ref = s.actor.progress.remote()
            finished += s.finished if s.inflight else 0
        self.on_progress(finished)

    def _start(self) -> _Slot:
        actor = self._actor_cls.remote(self._config_ref)
        return _Slot(actor=actor, ready_ref=actor.ready.remote())

    def _assign(self, pending: collections.deque) -> None:
        """Give shards one at a time to the least-loaded live actor, up to `in_flight` each."""
        while pending:
            open_slots = [s for s in self.slots if s.ready and len(s.inflight) < self.in_flight]
            if not open_slots:
                return
            slot = min(open_slots, key=lambda s: len(s.inflight))
            shard = pending.popleft()
            slot.inflight[slot.actor.restore_shard.remote(shard)] = shard
            self.unsettled[shard["shard_id"]] = shard

    def _on_ready(self, slot: _Slot) -> None:
        try:
            slot.info = ray.get(slot.ready_ref)
            slot.ready = True
            self.ready_times.append(time.monotonic())
            if self.first_ready_at is None:
                self.first_ready_at = self.ready_times[0]
        except RayError as e:
            if getattr(e, "actor_init_failed", False) or isinstance(e, RayTaskError):
                raise WorkerStartError(f"could not start a restore worker: {_reason(e)}") from None
            self._replace(slot, None)  # its node went away while it started: try again

    def _on_shard(self, slot: _Slot, ref, pending: collections.deque, on_result) -> None:
        shard = slot.inflight.pop(ref)
        try:
            summary = ray.get(ref)
        except RayTaskError as e:  # restore_shard itself raised: retry elsewhere or later
            if isinstance(getattr(e, "cause", None), StorageUnusable):
                raise e.cause from None  # the shared storage failed: stop (see the module docstring)
            self._retry(shard, _reason(e), pending, on_result)
            return
        except RayError as e:  # the actor is dead or unreachable
            self._retry(shard, f"worker lost ({_reason(e)})", pending, on_result)
            self._replace(slot, pending, on_result, reason=f"worker lost ({_reason(e)})")
            return
        slot.finished = 0  # its count included this shard; the next answer counts the others
        self._deliver(summary, on_result)

    def _replace(self, slot: _Slot, pending, on_result=None, reason: str = "") -> None:
        """Kill `slot`'s actor for good, re-queue its shards, start a new actor in its place.

        Shards whose results were already complete when the actor went are delivered, not re-run.
        """
        refs = list(slot.inflight)
        finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        ray.kill(slot.actor, no_restart=True)
        for ref in refs:
            shard = slot.inflight.pop(ref)
            if ref in finished:
                try:
                    self._deliver(ray.get(ref, timeout=5), on_result)
                    continue
                except Exception:  # lost with its node, or failed: run it again
                    pass
            self._retry(shard, reason, pending, on_result)
        self.slots[self.slots.index(slot)] = self._start()
        self.workers_replaced += 1

    def _retry(self, shard: dict, reason: str, pending, on_result) -> None:
        shard = dict(shard, attempt=shard["attempt"] + 1)
        if shard["attempt"] < self.max_attempts:
            pending.appendleft(shard)
            return
        self.shards_failed += 1
        rows = [fail(r, f"shard {shard['shard_id']} failed {shard['attempt']} times: {reason}")
                for r in shard_rows(self.config, shard, worker="", node="")]
        self._deliver({"shard_id": shard["shard_id"], "attempt": shard["attempt"], "worker": "",
                       "node": "", "seconds": 0.0, "busy_seconds": 0.0, "rows": rows}, on_result)

    def _deliver(self, summary: dict, on_result) -> None:
        self.shards_done += 1
        ok = sum(r["status"] == "ok" for r in summary["rows"])
        self.images_ok += ok
        self.images_failed += len(summary["rows"]) - ok
        on_result(summary)
        self.unsettled.pop(summary["shard_id"], None)


def _resources(res: dict) -> str:
    """'2 CPU, 0 GPU, 4.0 GiB memory' of Ray's cluster resources."""
    return (f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, "
            f"{res.get('memory', 0) / 2**30:.1f} GiB memory")


def _reason(e: BaseException) -> str:
    """The first meaningful line of a Ray error (its cause when there is one)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the exception line is at the end of a traceback
        if "Error" in ln or "Exception" in ln:
            return ln.strip()[:500]
    return (lines[0] if lines else type(e).__name__)[:500]
