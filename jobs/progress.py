"""Progress of a job: a tqdm bar (images/s, failures, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts images as workers finish them and as shards commit.

    `update(ok, failed)` when a shard commits; `running(n)` with the images the workers have finished
    in shards not committed yet (reported by the dispatcher every few seconds); `close()` at the end.
    On a TTY a tqdm bar; otherwise one line at most every `interval` seconds (and a last one), e.g.
    ``[ddnm-batch] 120/400 images (3 failed) 2.10 img/s, ETA 2m13s``.
    """

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None, interval: float = 10.0,
                 tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.start_done, self.committed, self.failed = total, done, done, 0
        self.in_flight = 0
        self._high = done
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

    def line(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = f"{int(left / rate // 60)}m{int(left / rate % 60):02d}s" if rate > 0 and left else "-"
        return (f"[ddnm-batch] {self.done}/{self.total} images ({self.failed} failed) "
                f"{rate:.2f} img/s, ETA {eta}")

    def update(self, ok: int, failed: int) -> None:
        """A shard committed with `ok` and `failed` images."""
        self.committed += ok + failed
        self.in_flight = max(0, self.in_flight - (ok + failed))  # they were counted as running
        self.failed += failed
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
            self.bar.set_postfix(failed=self.failed)
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
        self.in_flight = 0
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            self.bar.close()
        elif self._printed != (self.done, self.failed):
            self._print()

    def _print(self) -> None:
        self._printed = (self.done, self.failed)
        print(self.line(), file=self.stream, flush=True)
