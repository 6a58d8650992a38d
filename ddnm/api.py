"""Notebook API: restore a batch of images in one call, and the batch sampler the Ray worker shares.

Scales: the public functions take and return images on ``[0, 1]``; inside, everything is on
``[-1, 1]`` (INTERFACES.md). ``sigma_y`` here is the noise std on the ``[0, 1]`` scale, as the paper
and the job files quote it (e.g. 0.05); the sampler gets ``2 * sigma_y``.

Randomness: image ``key``'s k-th sample draws from ``image_generator(seed, key)`` (k = 0) or
``image_generator(seed, key, k)`` (k > 0), so sample 0 of a K-sample run equals the 1-sample run; the
observation noise of evaluate mode draws from ``image_generator(seed, key, "noise")``. Results do not
depend on the batch an image lands in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddnm import metrics
from ddnm.sampling import ddnm_sample, image_generator, linear_schedule

MODES = ("evaluate", "restore")


@dataclass(frozen=True, kw_only=True)
class BatchSamples:
    """Result of :func:`sample_batch`."""

    x: torch.Tensor
    """(B, C, H, W) mean of the K samples' final x0, ``[-1, 1]`` scale, not clamped."""
    std: torch.Tensor | None
    """(B, C, H, W) per-pixel std over the K samples clamped to ``[0, 1]`` (None when K = 1)."""
    model_calls: int
    """Model calls per sample (a K-sample batch evaluates the model on B*K images per call)."""


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


def generators_for(keys: Sequence[str], seed: int, samples: int, device) -> list[torch.Generator]:
    """One generator per (image, sample), image-major: ``[(key0, 0), (key0, 1), ..., (key1, 0), ...]``."""
    return [image_generator(seed, key, device, *([k] if k else [])) for key in keys for k in range(samples)]


def observation_noise(keys: Sequence[str], seed: int, shape: Sequence[int], device) -> torch.Tensor:
    """(B, *shape) standard normal noise for evaluate-mode observations, keyed per image."""
    return torch.stack([torch.randn(tuple(shape), generator=image_generator(seed, k, device, "noise"),
                                    device=device) for k in keys])


def evaluate_observation(
    op, x: torch.Tensor, *, sigma_y: float, seed: int, keys: Sequence[str]
) -> torch.Tensor:
    """``y = A x + 2 sigma_y n`` for clean images x on ``[-1, 1]`` (sigma_y on the ``[0, 1]`` scale)."""
    y = op.A(x)
    if sigma_y > 0:
        y = y + (2.0 * sigma_y) * observation_noise(keys, seed, y.shape[1:], y.device).to(y.dtype)
    return y


@torch.no_grad()
def sample_batch(
    model,
    op,
    y: torch.Tensor,
    *,
    keys: Sequence[str],
    seed: int = 0,
    steps: int = 100,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    travel: Sequence[int] = (1, 1, 1),
    samples: int = 1,
    dtype: torch.dtype | None = None,
    alpha_bar: torch.Tensor | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> BatchSamples:
    """K samples for each of B observations in one batched DDNM pass (the worker's and notebook's path).

    model, op and y on one device; op built for the B images (per-image buffers are repeated with
    ``op.select``). sigma_y on the ``[0, 1]`` scale. dtype: the sampler state is float64 when dtype or
    y is float64, else float32 (a bf16/fp16 model casts inside its adapter). alpha_bar defaults to the
    linear schedule of T = 1000.
    """
    if len(keys) != y.shape[0]:
        raise ValueError(f"keys must hold one key per image: got {len(keys)} for a batch of {y.shape[0]}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if float(sigma_y) < 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
    b = y.shape[0]
    state = torch.float64 if torch.float64 in (dtype, y.dtype) else torch.float32
    y = y.to(state)
    if samples > 1:
        idx = [i for i in range(b) for _ in range(samples)]
        y = y[idx]
        op = op.select(idx) if hasattr(op, "select") else op
    abar = linear_schedule(1000) if alpha_bar is None else alpha_bar
    out = ddnm_sample(model, y, op, abar, steps=steps, eta=eta, sigma_y=2.0 * float(sigma_y),
                      travel=tuple(travel), generators=generators_for(keys, seed, samples, y.device),
                      callback=callback)
    xs = out.x.view(b, samples, *out.x.shape[1:])
    std = ((xs.clamp(-1, 1) + 1) / 2).std(dim=1) if samples > 1 else None
    return BatchSamples(x=xs.mean(dim=1), std=std, model_calls=out.model_calls)


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
    **task_settings: Any,
) -> RestoreResult:
    """Restore a batch of images with DDNM (``sigma_y == 0``) or DDNM+ (``sigma_y > 0``).

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
    """
    from ddnm import models, operators

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
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
    x01 = x01.to(device)
    if mode == "evaluate" and x01.shape[1] == 1 and getattr(model, "in_channels", 1) == 3:
        x01 = x01.expand(-1, 3, -1, -1)  # a grey photo as the clean image of an RGB prior
    pm1 = x01 * 2 - 1

    name, settings = _task_name(task, task_settings)
    if masks is not None:
        settings["masks"] = masks.to(device)
    if mode == "evaluate":
        x_shape = tuple(x01.shape[1:])
    elif isinstance(task, operators.Operator):
        x_shape = task.x_shape
    elif name in operators.TASKS:
        obs_settings = {k: v for k, v in settings.items() if k != "masks"}
        x_shape = operators.TASKS[name].x_shape_from_observation(tuple(x01.shape[1:]), **obs_settings)
    else:
        x_shape = (getattr(model, "in_channels", x01.shape[1]), *x01.shape[2:])
    spec = task if isinstance(task, operators.Operator) else {"task": name, **settings}
    op = operators.build(spec, x_shape=x_shape, device=device)

    if mode == "evaluate":
        y = evaluate_observation(op, pm1, sigma_y=sigma_y, seed=seed, keys=keys)
    else:
        y = op.observe(pm1)
    start = time.perf_counter()
    out = sample_batch(model, op, y, keys=keys, seed=seed, steps=steps, eta=eta, sigma_y=sigma_y,
                       travel=travel, samples=samples, callback=callback)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / b

    x = out.x.float()
    restored = (x.clamp(-1, 1) + 1) / 2
    per_image: dict[str, torch.Tensor] = {
        "consistency": metrics.consistency(op, x, y.float()),
        "consistency_clamped": metrics.consistency(op, x.clamp(-1, 1), y.float()),
    }
    if mode == "evaluate":
        per_image["psnr"] = metrics.psnr(restored, x01)
        per_image["ssim"] = metrics.ssim(restored, x01)
    rows = [{k: float(v[i]) for k, v in per_image.items()} | {"model_calls": out.model_calls,
            "samples": samples, "seconds": seconds} for i in range(b)]
    view = ((op.y_to_image(y).float().clamp(-1, 1) + 1) / 2).cpu()
    return RestoreResult(images=restored.cpu(), std=None if out.std is None else out.std.float().cpu(),
                         observations=y.cpu(), observation_images=view, metrics=rows)


def _task_name(task, task_settings: dict) -> tuple[str | None, dict]:
    from ddnm.operators import Operator

    if isinstance(task, Operator):
        if task_settings:
            raise ValueError(f"settings {sorted(task_settings)} cannot be applied to an operator instance")
        return getattr(task, "name", None), {}
    if isinstance(task, Mapping):
        spec = dict(task)
        if "task" not in spec:
            raise ValueError(f"task spec needs a 'task' key, got keys {sorted(spec)}")
        name = spec.pop("task")
        return name, {**spec, **task_settings}
    if isinstance(task, str):
        return task, dict(task_settings)
    raise ValueError(f"task must be a task name, a spec dict or an Operator, got {type(task).__name__}")


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
