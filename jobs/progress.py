"""Progress of a job: a tqdm bar (images/s, failures, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts images as shards commit. `update(ok, failed)` after each shard; `close()` at the end.

    On a TTY a tqdm bar; otherwise one line at most every `interval` seconds (and a last one), e.g.
    ``[ddnm-batch] 120/400 images (3 failed) 2.10 img/s, ETA 2m13s``.
    """

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None, interval: float = 10.0,
                 tty: bool | None = None, cost_total: int | None = None, cost_done: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.start_done, self.done, self.failed = total, done, done, 0
        # with a cost (pixels x model calls per shard, jobs/sizes.py) the ETA counts cost, not images
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

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def seconds_left(self) -> float | None:
        """The ETA in seconds: cost left / cost rate when costs are known, else images left / img/s."""
        elapsed = time.monotonic() - self.t0
        if self.cost_total:
            done = self.cost_done - self.cost_start
            left = self.cost_total - self.cost_done
        else:
            done, left = self.done - self.start_done, self.total - self.done
        return left * elapsed / done if done > 0 and left > 0 else None

    def line(self) -> str:
        rate = self.rate()
        s = self.seconds_left()
        eta = f"{int(s // 60)}m{int(s % 60):02d}s" if s is not None else "-"
        return (f"[ddnm-batch] {self.done}/{self.total} images ({self.failed} failed) "
                f"{rate:.2f} img/s, ETA {eta}")

    def update(self, ok: int, failed: int, cost: int = 0) -> None:
        self.done += ok + failed
        self.failed += failed
        self.cost_done += cost
        if self.bar is not None:
            if self._waiting:
                self.bar.set_description_str("restoring")
                self._waiting = False
            self.bar.update(ok + failed)
            s = self.seconds_left()
            self.bar.set_postfix(failed=self.failed, **({"eta_by_cost": f"{int(s // 60)}m{int(s % 60):02d}s"}
                                                        if self.cost_total and s is not None else {}))
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self._print()

    def waiting(self, ready: int, wanted: int, seconds: float) -> None:
        """While no worker can take work: "waiting for N workers: k ready (GPU nodes scaling up)"."""
        text = f"waiting for {wanted} workers: {ready} ready (GPU nodes scaling up), {seconds:.0f} s"
        if self.bar is not None:
            self.bar.set_description_str(text)
            self._waiting = True
        elif time.monotonic() - self._last >= self.interval or not self._waited:
            self._last = time.monotonic()
            print(f"[ddnm-batch] {text}", file=self.stream, flush=True)
        self._waited = True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self._printed != (self.done, self.failed):
            self._print()

    def _print(self) -> None:
        self._printed = (self.done, self.failed)
        print(self.line(), file=self.stream, flush=True)
