"""Progress of a job: a tqdm bar (images/s, failures, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

QUIET_WAIT = 5.0
"""Seconds of waiting for workers that pass without a word (a local actor loads its model in ~3 s)."""


class Progress:
    """Counts images as workers finish them and as shards commit.

    `update(ok, failed, cost)` when a shard commits; `running(n)` with the images the workers have
    finished in shards not committed yet (reported by the dispatcher every few seconds); `close()` at
    the end. With a cost (pixels x model calls per shard, jobs/sizes.py) the ETA counts cost, not
    images, so a 40 MP scan weighs what it costs. On a TTY a tqdm bar; otherwise one line at most every
    `interval` seconds (and a last one), e.g. ``[ddnm-batch] 120/400 images (3 failed) 2.10 img/s,
    ETA 2m13s``.
    """

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None, interval: float = 10.0,
                 tty: bool | None = None, cost_total: int | None = None, cost_done: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.start_done, self.committed, self.failed = total, done, done, 0
        self.in_flight = 0
        self._high = done
        self.cost_total, self.cost_start, self.cost_done = cost_total, cost_done, cost_done
        self.interval = interval
        self.t0 = self._last = time.monotonic()
        self._printed: tuple[int, int] | None = None
        self.bar = None
        self._waited = self._waiting = False
        use_tty = self.stream.isatty() if tty is None else tty
        if use_tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="img", file=self.stream, dynamic_ncols=True,
                            desc="restoring", smoothing=0.1)
            self.bar.set_postfix(failed=0)

    @property
    def done(self) -> int:
        """Images finished: in committed shards, and by the workers in shards still running (never
        going back, though a running count can arrive late)."""
        self._high = min(self.total, max(self._high, self.committed + self.in_flight))
        return self._high

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def seconds_left(self) -> float | None:
        """The ETA in seconds: cost left / cost rate when costs are known (running images at the mean
        cost per image), else images left / img/s."""
        elapsed = time.monotonic() - self.t0
        if self.cost_total:
            running = self.in_flight * self.cost_total / max(self.total, 1)
            done = self.cost_done + running - self.cost_start
            left = self.cost_total - self.cost_done - running
        else:
            done, left = self.done - self.start_done, self.total - self.done
        return left * elapsed / done if done > 0 and left > 0 else None

    def eta(self) -> str:
        s = self.seconds_left()
        return f"{int(s // 60)}m{int(s % 60):02d}s" if s is not None else "-"

    def line(self) -> str:
        return (f"[ddnm-batch] {self.done}/{self.total} images ({self.failed} failed) "
                f"{self.rate():.2f} img/s, ETA {self.eta()}")

    def update(self, ok: int, failed: int, cost: int = 0) -> None:
        """A shard committed with `ok` and `failed` images, of `cost` (pixels x model calls)."""
        self.committed += ok + failed
        self.in_flight = max(0, self.in_flight - (ok + failed))  # they were counted as running
        self.failed += failed
        self.cost_done += cost
        self._show()

    def running(self, finished: int) -> None:
        """`finished` images are done in shards that have not committed yet."""
        self.in_flight = finished
        self._show()

    def _show(self) -> None:
        if self.bar is not None:
            if self._waiting:
                self.bar.set_description_str("restoring")
                self._waiting = False
            self.bar.update(self.done - self.bar.n)
            extra = {"eta_by_cost": self.eta()} if self.cost_total else {}
            self.bar.set_postfix(failed=self.failed, **extra)
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self._print()

    def waiting(self, ready: int, wanted: int, seconds: float) -> None:
        """While no worker can take work: "waiting for N workers: k ready (GPU nodes scaling up)",
        once the wait outlasts an ordinary actor start (QUIET_WAIT seconds)."""
        if seconds < QUIET_WAIT:
            return
        text = f"waiting for {wanted} workers: {ready} ready (GPU nodes scaling up), {seconds:.0f} s"
        if self.bar is not None:
            self.bar.set_description_str(text)
            self._waiting = True
        elif time.monotonic() - self._last >= self.interval or not self._waited:
            self._last = time.monotonic()
            print(f"[ddnm-batch] {text}", file=self.stream, flush=True)
        self._waited = True

    def close(self) -> None:
        self.in_flight = 0
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            self.bar.close()
        elif self._printed != (self.done, self.failed):
            self._print()

    def _print(self) -> None:
        self._printed = (self.done, self.failed)
        print(self.line(), file=self.stream, flush=True)
