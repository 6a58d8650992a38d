"""Stand-ins for the accelerator side, to test the worker pipeline and the dispatcher alone.

`StubSampler` has the interface of `cluster.sampling.ShardSampler` and "restores" by returning the
input (so outputs are checkable); a key containing ``"boom"`` makes any batch holding it raise, as an
out-of-memory error would; ``"die"`` kills the process. `StubWorker` is a `RestoreWorker` using it.
"""

from __future__ import annotations

import os
import time

import torch

from cluster.outputs import BatchResult
from cluster.worker import RestoreWorker


class StubSampler:
    def __init__(self, config: dict, device: torch.device):
        self.config = config
        self.device = device
        self.calls: list[int] = []

    input_channels = 3

    def check_size(self, image_shape: tuple) -> str | None:
        size = self.config.get("stub_size")
        if size and tuple(image_shape[1:]) != (size, size):
            h, w = image_shape[1:]
            return f"wrong size for the model: image is {w}x{h}, needs {size}x{size}"
        return None

    def x_shape(self, image_shape: tuple) -> tuple:
        return tuple(image_shape)

    def batch_size(self, image_shape: tuple) -> int:
        return int(self.config.get("batch_size") or 4)

    def run(self, images, keys, masks):
        if any("die" in k for k in keys):
            os._exit(1)  # the actor process dies, as when the OOM killer strikes
        if any("boom" in k for k in keys):
            raise RuntimeError("CUDA out of memory (stub)")
        self.calls.append(len(keys))
        time.sleep(float(self.config.get("stub_sleep", 0.0)))
        return [BatchResult(restored=im, std=None, observation_view=im[:, ::2, ::2],
                            metrics={"consistency": 0.0, "consistency_clamped": 0.0, "model_calls": 1})
                for im in images]


class StubWorker(RestoreWorker):
    def _make_sampler(self):
        return StubSampler(self.config, self.device)
