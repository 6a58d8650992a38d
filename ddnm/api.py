"""Notebook API: restore a batch of images in one call (``ddnm.restore``).

A thin front of :mod:`ddnm.restoration`, the one path the batch worker runs too: inputs become a
tensor, the task a :class:`~ddnm.restoration.Task`, and :func:`~ddnm.restoration.restore_batch` does
the work. Scales and randomness are described there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddnm.restoration import (
    MODES,
    BatchSamples,
    Canvas,
    Task,
    evaluate_observation,
    generators_for,
    match_channels,
    observation_noise,
    restore_batch,
    sample_batch,
)
from ddnm.solvers import Sampling

__all__ = ["MODES", "BatchSamples", "Canvas", "RestoreResult", "Sampling", "evaluate_observation",
           "generators_for",
           "observation_noise", "restore", "sample_batch", "to_tensor"]


@dataclass(frozen=True, kw_only=True)
class RestoreResult:
    """Result of :func:`restore`; tensors on the CPU."""

    images: torch.Tensor
    """(B, C, H, W) float32 on ``[0, 1]``: the clamped mean of the K samples."""
    std: torch.Tensor | None
    """(B, C, H, W) per-pixel std over the K samples on ``[0, 1]``, or None when K = 1."""
    observations: torch.Tensor
    """y (leading dim B) on the ``[-1, 1]`` scale, as the operator returns it."""
    observation_images: torch.Tensor
    """``op.y_to_image(y)`` mapped to ``[0, 1]``, for display."""
    metrics: list[dict[str, float]] = field(default_factory=list)
    """Per image: psnr and ssim (evaluate mode), consistency (``||A x - y||`` before clamping),
    consistency_clamped, model_calls, samples, seconds (batch sampling wall time / B)."""

    def to_pil(self) -> list:
        """The restored images as 8-bit PIL images."""
        from PIL import Image

        arr = (self.images.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def restore(
    images,
    task,
    model,
    *,
    mode: str = "evaluate",
    steps: int = 100,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    travel: Sequence[int] = (1, 1, 1),
    samples: int = 1,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    masks: torch.Tensor | None = None,
    checkpoint: str | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    canvas: Canvas | str | None = None,
    solver: str | Any | None = None,
    solver_settings: dict[str, Any] | None = None,
    **task_settings: Any,
) -> RestoreResult:
    """Restore a batch of images with a zero-shot solver: by default DDNM (``sigma_y == 0``) or DDNM+.

    images: a (B, C, H, W) tensor on ``[0, 1]``, a list of equal-size PIL images, or one PIL image.
      evaluate mode: clean images, degraded here (``y = A x + 2 sigma_y n``) and scored (PSNR, SSIM);
      restore mode: already degraded images as the user has them (``y = op.observe(image)``).
    task: a task name, a ``{"task": ..., **settings}`` spec, or an ``Operator``; ``task_settings``
      (e.g. ``scale=4``) and ``masks`` ((B or 1, 1, H, W), 1 = keep) go to ``ddnm.operators.build``.
    model: an ``EpsModel`` or a registry name (built with ``checkpoint``, on ``device``).
    sigma_y: observation noise std on the ``[0, 1]`` scale. travel: (L, s, r) time travel.
    samples: K samples per image in one batched pass; ``images`` is their mean, ``std`` their spread.
    keys: one string per image for its random streams (default "0", "1", ...); seed: the run's seed.
    callback(step_index, t, x0_hat) sees every step's x0_hat of the B*K batch ([-1, 1] scale).
    canvas: how images of any size meet the model, a :class:`~ddnm.canvas.Canvas` or its kind
      ("auto" (default), "whole", "tiled", "maskshift"); the batch worker runs the same setting.
    solver: a registered solver name (``ddnm.solvers.SOLVERS``), a ``"package.module:NAME"`` path or a
      :class:`ddnm.solvers.Solver`; None: ``ddnm``, or ``ddnm+`` when ``sigma_y > 0``.
      solver_settings: that solver's own settings (its ``settings`` table).
    All sampling settings are validated at once into one :class:`ddnm.solvers.Sampling` before any work.
    """
    from ddnm import models
    from ddnm.operators import Operator

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sampling = Sampling(solver=solver, solver_settings=solver_settings or {}, steps=steps, eta=eta,
                        sigma_y=sigma_y, travel=tuple(travel), samples=samples, seed=seed,
                        canvas=Canvas() if canvas is None else canvas)
    x01 = to_tensor(images)
    if isinstance(model, str):
        model = models.build(model, checkpoint, device=device or "cpu")
    if device is None:
        device = getattr(model, "device", None) or "cpu"
    device = torch.device(device)
    b = x01.shape[0]
    keys = [str(i) for i in range(b)] if keys is None else [str(k) for k in keys]
    if len(keys) != b:
        raise ValueError(f"keys must hold one key per image: got {len(keys)} for {b} images")
    channels = getattr(model, "in_channels", 3)
    if isinstance(task, Operator):
        if task_settings:
            raise ValueError(f"settings {sorted(task_settings)} cannot be applied to an operator instance")
        x = x01.to(device)
        x = match_channels(x, channels) if mode == "evaluate" else x
        op = task.to(device=device)
    else:
        spec = Task.of(task, task_settings)
        x = spec.prepare(x01.to(device), mode=mode, model_channels=channels)
        x_shape = spec.x_shape(tuple(x.shape[1:]), mode=mode, model_channels=channels)
        op = spec.build(x_shape, device=device, masks=None if masks is None else masks.to(device))
    start = time.perf_counter()
    out = restore_batch(model, op, x, mode=mode, keys=keys, sampling=sampling, callback=callback)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / b
    rows = [{k: float(v[i]) for k, v in out.metrics.items()} | {"model_calls": out.model_calls,
            "samples": samples, "seconds": seconds, "canvas": out.canvas, "tiles": out.tiles,
            "solver": sampling.name, "solver_settings": sampling.settings_json()}
            for i in range(b)]
    return RestoreResult(images=out.images.cpu(), std=None if out.std is None else out.std.cpu(),
                         observations=out.observations.cpu(),
                         observation_images=out.observation_images.cpu(), metrics=rows)


def to_tensor(images) -> torch.Tensor:
    """A (B, C, H, W) float32 tensor on ``[0, 1]`` from a tensor, one PIL image or a list of them.

    PIL images keep their channels: "L" -> 1, "RGB" -> 3 (other modes are converted to RGB).
    """
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if images.is_floating_point():
            lo, hi = float(images.min()), float(images.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ValueError(f"images must be on [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
            return images.float()
        return images.float() / 255.0
    if hasattr(images, "convert"):  # one PIL image
        images = [images]
    if not isinstance(images, Sequence) or not images:
        raise ValueError("images must be a tensor, a PIL image or a list of them, "
                         f"got {type(images).__name__}")
    arrays = []
    for im in images:
        if not hasattr(im, "convert"):
            raise ValueError(f"images: expected PIL images in the list, got {type(im).__name__}")
        im = im if im.mode in ("L", "RGB") else im.convert("RGB")
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("images: all images of a batch need one size and mode, "
                         f"got {[a.shape for a in arrays]}")
    return torch.from_numpy(np.stack(arrays))
