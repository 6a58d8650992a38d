"""Stand-ins for the accelerator side, to test the worker pipeline and the dispatcher alone.

`StubRestorer` has the interface of `cluster.restorer.BatchRestorer` and "restores" by returning the
input (so outputs are checkable); a key containing ``"boom"`` makes any batch holding it raise, as an
out-of-memory error would; ``"die"`` kills the process. `stub_worker(size=, sleep=)` is a
`RestoreWorker` using it: `size` makes other sizes a bad input, `sleep` is seconds per batch.
"""

from __future__ import annotations

import os
import time

import torch

from cluster.restorer import BatchResult
from cluster.worker import RestoreWorker


class StubRestorer:
    def __init__(self, config, device: torch.device, *, size: int | None = None, sleep: float = 0.0):
        self.config = config
        self.device = device
        self.size, self.sleep = size, sleep
        self.calls: list[int] = []

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    def check_size(self, image_shape: tuple) -> str | None:
        if self.size and tuple(image_shape[1:]) != (self.size, self.size):
            h, w = image_shape[1:]
            return f"wrong size for the model: image is {w}x{h}, needs {self.size}x{self.size}"
        return None

    def x_shape(self, image_shape: tuple) -> tuple:
        return tuple(image_shape)

    def batch_size(self, image_shape: tuple) -> int:
        return int(self.config.batch_size or 4)

    def run(self, images, keys, masks):
        if any("die" in k for k in keys):
            os._exit(1)  # the actor process dies, as when the OOM killer strikes
        if any("boom" in k for k in keys):
            raise RuntimeError("CUDA out of memory (stub)")
        self.calls.append(len(keys))
        time.sleep(self.sleep)
        return [BatchResult(restored=im, std=None, observation_view=im[:, ::2, ::2],
                            metrics={"consistency": 0.0, "consistency_clamped": 0.0, "model_calls": 1})
                for im in images]


class StubWorker(RestoreWorker):
    stub_size: int | None = None
    stub_sleep: float = 0.0

    def _make_sampler(self):
        return StubRestorer(self.config, self.device, size=self.stub_size, sleep=self.stub_sleep)


def stub_worker(*, size: int | None = None, sleep: float = 0.0) -> type[StubWorker]:
    """A StubWorker class whose stand-in refuses sizes other than `size` and sleeps `sleep` s a batch."""
    return type("StubWorker", (StubWorker,), {"stub_size": size, "stub_sleep": sleep})
