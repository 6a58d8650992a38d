"""The accelerator side of the worker: one batch of equal-size images -> restored images and metrics.

`ShardSampler` owns the model and turns the job's settings into calls of the ddnm library:
build the operator for the batch (with per-image masks), make the observation (evaluate: ``y = A x +
n`` with ``n`` seeded per image; restore: ``op.observe(image)``), sample with
``ddnm.api.sample_batch`` (the same low-level path as the notebook API) and compute the metrics.
"""

from __future__ import annotations

import torch

import ddnm.metrics
import ddnm.models
from cluster import io
from cluster.checkpoints import local_checkpoint
from cluster.outputs import BatchResult
from ddnm.api import evaluate_observation, sample_batch
from ddnm.operators import TASKS
from ddnm.operators import build as build_operator

CPU_BATCH_SIZE = 4
MAX_BATCH_SIZE = 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GREY_TASKS = ("colorize", "old_photo")  # restore mode: observations that are grey images
MASK_KEYWORDS = ("random", "none", "box", "center")


def is_mask_file(value) -> bool:
    """Whether a task's ``mask`` setting names a file (else a keyword such as 'random', or None)."""
    return isinstance(value, str) and value.lower() not in MASK_KEYWORDS


class ShardSampler:
    """The model and the job's sampling settings, on one device.

    Args:
        config: the worker config (docs/INTERFACES.md).
        device: where the model runs.
    """

    def __init__(self, config: dict, device: torch.device):
        self.config = config
        self.device = device
        dtype = config.get("dtype") or "fp32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype = DTYPES[dtype]
        if config["task"] not in TASKS and ":" not in config["task"]:
            raise ValueError(f"task: unknown task {config['task']!r}; known: {sorted(TASKS)}")
        if config["mode"] not in ("evaluate", "restore"):
            raise ValueError(f"mode must be 'evaluate' or 'restore', got {config['mode']!r}")
        checkpoint = local_checkpoint(config.get("checkpoint"), config.get("storage_options"))
        self.model = ddnm.models.build(config["model"], checkpoint, device=device,
                                       dtype=self.dtype)
        self.samples = int(config.get("samples") or 1)
        # a mask file is read by the worker (any fsspec URL) and passed as `masks`; keywords stay
        self.settings = {k: v for k, v in (config.get("task_settings") or {}).items()
                         if not (k == "mask" and is_mask_file(v))}
        self._batch_sizes: dict[tuple, int] = {}
        self._ops: dict[tuple, object] = {}
        self._size_checks: dict[tuple, str | None] = {}
        self._probed: dict[tuple, str | None] = {}

    @property
    def input_channels(self) -> int | None:
        """Channels to decode inputs with: the model's in evaluate mode, as stored in restore mode."""
        return self.model.in_channels if self.config["mode"] == "evaluate" else None

    # --------------------------------------------------------------------------------- shapes, batch
    def x_shape(self, image_shape: tuple) -> tuple[int, int, int]:
        """The clean image's (C, H, W) for a decoded input of `image_shape`."""
        if self.config["mode"] == "evaluate":
            return tuple(image_shape)
        c = 1 if self.config["task"] in GREY_TASKS else 3
        info = TASKS.get(self.config["task"])
        obs = (c, *image_shape[1:])
        if info is None:
            return (self.model.in_channels, *image_shape[1:])
        return tuple(info.x_shape_from_observation(obs, **self.settings))

    def check_size(self, image_shape: tuple) -> str | None:
        """Why an input of `image_shape` cannot be restored with this model and task, or None."""
        if image_shape not in self._size_checks:
            self._size_checks[image_shape] = self._check_size(image_shape)
        return self._size_checks[image_shape]

    def _check_size(self, image_shape: tuple) -> str | None:
        h, w = image_shape[1:]
        try:
            x_shape = self.x_shape(image_shape)
            info = TASKS.get(self.config["task"])
            if info is not None:
                info.validate(x_shape, **self.settings)
        except NotImplementedError as e:
            return str(e)
        except ValueError as e:
            return f"size {w}x{h} does not fit the task {self.config['task']}: {e}"
        return None

    def _probe(self, x_shape: tuple, keys: list[str]) -> None:
        """One model call on zeros of `x_shape` (cached): a size the network cannot take is a BadInput."""
        if x_shape not in self._probed:
            try:
                with torch.no_grad():
                    x = torch.zeros(1, *x_shape, device=self.device, dtype=torch.float32)
                    self.model(x, torch.full((1,), 500, device=self.device, dtype=torch.long))
                self._probed[x_shape] = None
            except (RuntimeError, ValueError) as e:
                if "out of memory" in str(e).lower():
                    raise
                self._probed[x_shape] = (f"wrong size for the model {self.config['model']}: cannot restore "
                                         f"{x_shape[2]}x{x_shape[1]} images ({str(e).splitlines()[0][:200]})")
        if self._probed[x_shape]:
            raise io.BadInput(", ".join(keys), self._probed[x_shape])

    def batch_size(self, image_shape: tuple) -> int:
        """Images per sampler call: the configured one, or the largest that fits (automatic)."""
        fixed = self.config.get("batch_size")
        if fixed:
            return int(fixed)
        if image_shape not in self._batch_sizes:
            self._batch_sizes[image_shape] = self._auto_batch_size(self.x_shape(image_shape))
        return self._batch_sizes[image_shape]

    def _auto_batch_size(self, x_shape: tuple) -> int:
        """CPU: a fixed default. CUDA: 60% of free memory / the peak memory of a batch-of-one forward."""
        if self.device.type != "cuda":
            return CPU_BATCH_SIZE
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        with torch.no_grad():
            x = torch.zeros(1, *x_shape, device=self.device, dtype=self.dtype)
            self.model(x, torch.full((1,), 500, device=self.device, dtype=torch.long))
        per_image = max(torch.cuda.max_memory_allocated(self.device) - base, 1) * 2  # x_t, x0, eps, ...
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(MAX_BATCH_SIZE, int(0.6 * free / per_image) // self.samples))

    def _operator(self, x_shape: tuple, kwargs: dict, *, shared: bool):
        """The task's operator for `x_shape`; built once per size unless it carries per-image masks
        (building cs_block's orthogonal matrices or cs_walsh's permutation is not free)."""
        if not shared:
            return build_operator(self.config["task"], x_shape=x_shape, device=self.device, **kwargs)
        if x_shape not in self._ops:
            self._ops[x_shape] = build_operator(self.config["task"], x_shape=x_shape, device=self.device,
                                                **kwargs)
        return self._ops[x_shape]

    # ---------------------------------------------------------------------------------------- sample
    def run(self, images: torch.Tensor, keys: list[str], masks: torch.Tensor | None) -> list[BatchResult]:
        """Restore a batch. images (B, C, H, W) in [0, 1] as decoded; masks (B or 1, 1, H, W) or None."""
        cfg = self.config
        b = images.shape[0]
        x_shape = self.x_shape(tuple(images.shape[1:]))
        kwargs = dict(self.settings)
        if masks is not None:
            kwargs["masks"] = masks.to(self.device)
        self._probe(x_shape, keys)
        op = self._operator(x_shape, kwargs, shared=masks is None)
        img = images.to(self.device, torch.float32) * 2 - 1
        gt = None
        if cfg["mode"] == "evaluate":
            gt = img
            y = evaluate_observation(op, img, sigma_y=float(cfg.get("sigma_y") or 0.0), seed=int(cfg["seed"]),
                                     keys=keys)
        else:
            if img.shape[1] == 1 and cfg["task"] not in GREY_TASKS:
                img = img.expand(-1, 3, -1, -1)
            y = op.observe(img)
        out = sample_batch(
            self.model, op, y, keys=keys, seed=int(cfg["seed"]), steps=int(cfg["steps"]),
            eta=float(cfg["eta"]), sigma_y=float(cfg.get("sigma_y") or 0.0), travel=tuple(cfg["travel"]),
            samples=self.samples, dtype=self.dtype,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        x = out.x.float()  # (B, C, H, W) [-1, 1], mean of K samples, unclamped
        x01 = ((x.clamp(-1, 1) + 1) / 2)
        metrics = {
            "consistency": ddnm.metrics.consistency(op, x, y),
            "consistency_clamped": ddnm.metrics.consistency(op, x.clamp(-1, 1), y),
        }
        if gt is not None:
            gt01 = (gt + 1) / 2
            metrics["psnr"] = ddnm.metrics.psnr(x01, gt01)
            metrics["ssim"] = ddnm.metrics.ssim(x01, gt01)
        view = ((op.y_to_image(y).float().clamp(-1, 1) + 1) / 2).cpu()
        std = out.std.float().cpu() if out.std is not None else None  # [0, 1] scale
        results = []
        x01 = x01.cpu()
        for i in range(b):
            row = {k: float(v[i]) for k, v in metrics.items()}
            row["model_calls"] = int(out.model_calls)
            results.append(BatchResult(restored=x01[i], std=None if std is None else std[i],
                                       observation_view=view[i], metrics=row))
        return results

