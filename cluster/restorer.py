"""The accelerator side of the worker: one batch of equal-size images -> restored images and metrics.

`BatchRestorer` owns the model and the job's task on one device. Everything about the restoration
itself -- which channels an input is read with, the clean image's shape, degrade or observe, sample,
score -- is ``ddnm.restoration`` (the path ``ddnm.restore`` runs too); this class adds what a
long-running worker needs on top: operators cached per size, a probe of sizes the network cannot take,
an automatic batch size and tile batch from free accelerator memory, and a refusal (before sampling)
of a canvas that cannot fit in host memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import ddnm.models
from cluster.checkpoints import local_checkpoint
from cluster.config import WorkerConfig
from cluster.images import BadInput
from cluster.scoring import PerceptualScorer
from ddnm.restoration import restore_batch

CPU_BATCH_SIZE = 4
"""Images per sampler call on a CPU when the config says ``batch_size: None`` (automatic)."""
MAX_BATCH_SIZE = 64
CPU_TILE_BATCH = 32
"""Tiles per model call on a CPU (bench/RESULTS.md: larger CPU batches are slower per tile)."""
MAX_TILE_BATCH = 1024
CANVAS_COPIES = 12
"""Float32 copies of a canvas one sample of one image holds while sampling (x_t, x0, eps, the blended
eps and its weights, y and A^+ y, noise, the mean / std, the decoded input and the outputs): the host
memory check's estimate."""


def canvas_bytes(x_shape: tuple, samples: int = 1) -> int:
    """Estimated memory of sampling one image of clean shape ``x_shape`` (C, H, W) with K samples."""
    c, h, w = (int(v) for v in x_shape)
    return 4 * c * h * w * (CANVAS_COPIES * samples + 4)


def host_memory_available() -> int | None:
    """Bytes of host memory available now (``MemAvailable`` of /proc/meminfo), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    """One restored image, on the CPU."""

    restored: torch.Tensor  # (C, H, W) in [0, 1], mean of the K samples, clamped
    std: torch.Tensor | None  # (C, H, W) std of the K samples on [0, 1], None when K = 1
    observation_view: torch.Tensor  # (C', h, w) in [0, 1], y as an image (for panels)
    metrics: dict  # row fields: the metrics of ddnm.restoration.METRICS that apply, lpips, model_calls
    features: torch.Tensor | None = None  # (2048,) float64 Inception features of the restored PNG
    truth_features: torch.Tensor | None = None  # (2048,) of the ground truth (evaluate mode)


class BatchRestorer:
    """The model and the job's sampling settings, on one device.

    Args:
        config: the job's worker configuration.
        device: where the model runs.
    """

    def __init__(self, config: WorkerConfig, device: torch.device):
        self.config = config
        self.device = device
        self.task = config.task_spec
        self.dtype = ddnm.models.resolve_dtype(config.dtype)
        checkpoint = local_checkpoint(config.checkpoint, config.storage_options)
        self.model = ddnm.models.build(config.model, checkpoint, device=device, dtype=self.dtype)
        self._batch_sizes: dict[tuple, int] = {}
        self._ops: dict[tuple, object] = {}
        self._size_checks: dict[tuple, str | None] = {}
        self._probed: dict[tuple, str | None] = {}
        self.scorer = PerceptualScorer(config, device) if PerceptualScorer.wanted(config) else None
        self.sampling = config.sampling
        self.canvas = config.sampling.canvas
        self._tile_batch: int | None = None

    # --------------------------------------------------------------------------------- shapes, batch
    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded input (C, H, W) in the channels the task and model take (``Task.prepare``)."""
        return self.task.prepare(image[None], mode=self.config.mode, model_channels=self.model.in_channels)[0]

    def x_shape(self, image_shape: tuple) -> tuple[int, int, int]:
        """The clean image's (C, H, W) for a prepared input of `image_shape`."""
        return self.task.x_shape(image_shape, mode=self.config.mode, model_channels=self.model.in_channels)

    def check_size(self, image_shape: tuple) -> str | None:
        """Why a prepared input of `image_shape` cannot be restored with this task, or None (cached)."""
        if image_shape not in self._size_checks:
            self._size_checks[image_shape] = self.task.check(image_shape, mode=self.config.mode,
                                                             model_channels=self.model.in_channels)
        return self._size_checks[image_shape]

    def check_memory(self, image_shape: tuple) -> str | None:
        """Why an image of prepared shape `image_shape` cannot be sampled in this worker's host memory
        (estimate :func:`canvas_bytes`), or None: refused before sampling, never killed by the OOM killer."""
        need = canvas_bytes(self.x_shape(image_shape), self.sampling.samples)
        free = host_memory_available()
        if free is not None and need > free:
            c, h, w = self.x_shape(image_shape)
            return (f"too large for this worker: a {w}x{h} canvas needs about {need / 2**30:.1f} GiB of "
                    f"host memory to sample, {free / 2**30:.1f} GiB available")
        return None

    def model_shape(self, x_shape: tuple) -> tuple:
        """The shape the network sees for canvases of `x_shape`: the canvas, or one tile / window."""
        if self.canvas.resolve(self.model, x_shape) == "whole":
            return tuple(x_shape)
        t = self.canvas.side(self.model)
        return (x_shape[0], t, t)

    def _probe(self, x_shape: tuple, keys: list[str]) -> None:
        """One model call on zeros of the shape the network sees (cached): a size it cannot take is a
        BadInput."""
        x_shape = self.model_shape(x_shape)
        if x_shape not in self._probed:
            try:
                with torch.no_grad():
                    x = torch.zeros(1, *x_shape, device=self.device, dtype=torch.float32)
                    self.model(x, torch.full((1,), 500, device=self.device, dtype=torch.long))
                self._probed[x_shape] = None
            except (RuntimeError, ValueError) as e:
                if "out of memory" in str(e).lower():
                    raise
                self._probed[x_shape] = (f"wrong size for the model {self.config.model}: cannot restore "
                                         f"{x_shape[2]}x{x_shape[1]} images ({str(e).splitlines()[0][:200]})")
        if self._probed[x_shape]:
            raise BadInput(", ".join(keys), self._probed[x_shape])

    def batch_size(self, image_shape: tuple) -> int:
        """Images per sampler call: the configured one, or the largest that fits (automatic)."""
        if self.config.batch_size:
            return int(self.config.batch_size)
        if image_shape not in self._batch_sizes:
            self._batch_sizes[image_shape] = self._auto_batch_size(self.x_shape(image_shape))
        return self._batch_sizes[image_shape]

    def _auto_batch_size(self, x_shape: tuple) -> int:
        """CPU: a fixed default. CUDA: 60% of free memory / the peak memory of a batch-of-one forward.
        A tiled canvas: as many canvases as fit (:func:`canvas_bytes`), their tiles batched apart."""
        if self.canvas.resolve(self.model, x_shape) != "whole":
            t = self.canvas.side(self.model)
            if self.device.type != "cuda":
                return max(1, min(CPU_BATCH_SIZE, CPU_BATCH_SIZE * t * t // (x_shape[1] * x_shape[2])))
            free, _ = torch.cuda.mem_get_info(self.device)
            per_canvas = canvas_bytes(x_shape, self.sampling.samples) * self._memory
            return max(1, min(MAX_BATCH_SIZE, int(0.3 * free / per_canvas)))
        if self.device.type != "cuda":
            return CPU_BATCH_SIZE
        if self.sampling.info.grad:  # measured: a forward and a backward through the network
            per_image = self._forward_peak(x_shape, backward=True) * 2
        else:
            per_image = self._forward_peak(x_shape) * 2 * self._memory  # x_t, x0, eps, ...
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(MAX_BATCH_SIZE, int(0.6 * free / per_image) // self.sampling.samples))

    @property
    def _memory(self) -> float:
        """The solver's memory per image relative to a forward pass without gradients (``Solver.memory``)."""
        return max(1.0, float(self.sampling.info.memory))

    def _forward_peak(self, shape: tuple, *, backward: bool = False) -> int:
        """Peak accelerator bytes of one batch-of-one model call on zeros of `shape` (CUDA only); with
        `backward`, of the call and a vector-Jacobian product back to its input (what PiGDM and DPS do
        every step)."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t = torch.full((1,), 500, device=self.device, dtype=torch.long)
        x = torch.zeros(1, *shape, device=self.device, dtype=self.dtype)
        if backward:
            with torch.enable_grad():
                x.requires_grad_(True)
                out = self.model(x, t)
                torch.autograd.grad(out.float().sum(), x)
            del out
        else:
            with torch.no_grad():
                self.model(x, t)
        return max(torch.cuda.max_memory_allocated(self.device) - base, 1)

    def tile_batch(self) -> int:
        """Tiles per model call: CPU :data:`CPU_TILE_BATCH`; CUDA: half the free memory / the peak
        memory of one tile's forward (measured once)."""
        if self._tile_batch is None:
            if self.device.type != "cuda":
                self._tile_batch = CPU_TILE_BATCH
            else:
                t = self.canvas.side(self.model)
                per_tile = self._forward_peak((self.model.in_channels, t, t))
                free, _ = torch.cuda.mem_get_info(self.device)
                self._tile_batch = max(1, min(MAX_TILE_BATCH, int(0.5 * free / per_tile / self._memory)))
        return self._tile_batch

    def _operator(self, x_shape: tuple, masks: torch.Tensor | None):
        """The task's operator for `x_shape`; built once per size unless it carries per-image masks
        (building cs_block's orthogonal matrices or cs_walsh's permutation is not free)."""
        if masks is not None:
            return self.task.build(x_shape, device=self.device, masks=masks.to(self.device))
        if x_shape not in self._ops:
            self._ops[x_shape] = self.task.build(x_shape, device=self.device)
        return self._ops[x_shape]

    # ---------------------------------------------------------------------------------------- sample
    def run(self, images: torch.Tensor, keys: list[str], masks: torch.Tensor | None) -> list[BatchResult]:
        """Restore a batch. images (B, C, H, W) in [0, 1], prepared; masks (B or 1, 1, H, W) or None."""
        cfg = self.config
        x_shape = self.x_shape(tuple(images.shape[1:]))
        self._probe(x_shape, keys)
        op = self._operator(x_shape, masks)
        sampling = self.sampling
        if self.canvas.resolve(self.model, x_shape) != "whole":
            sampling = sampling.replace(canvas=dataclasses.replace(self.canvas, tile_batch=self.tile_batch()))
        out = restore_batch(self.model, op, images.to(self.device, torch.float32), mode=cfg.mode, keys=keys,
                            sampling=sampling)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        restored, view = out.images.cpu(), out.observation_images.cpu()
        std = None if out.std is None else out.std.cpu()
        scores = {k: v.cpu() for k, v in out.metrics.items()}
        feats = truth_feats = None
        if self.scorer is not None:  # evaluate mode only (the spec says so): `images` is the truth
            extra = self.scorer(out.images, images.to(self.device, torch.float32))
            if extra.lpips is not None:
                scores["lpips"] = extra.lpips
            feats, truth_feats = extra.features, extra.truth_features
        return [BatchResult(restored=restored[i], std=None if std is None else std[i],
                            observation_view=view[i],
                            metrics={**{k: float(v[i]) for k, v in scores.items()},
                                     "model_calls": int(out.model_calls), "canvas": out.canvas,
                                     "tiles": int(out.tiles)},
                            features=None if feats is None else feats[i],
                            truth_features=None if truth_feats is None else truth_feats[i])
                for i in range(images.shape[0])]
