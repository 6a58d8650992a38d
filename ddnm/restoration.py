"""One restoration path: images in, restored images, observations and per-image metrics out.

The notebook API (``ddnm.restore``) and the batch worker (``cluster/``) both call the functions here,
so "observe or degrade, sample, score" exists once:

* :class:`Task` -- a task (registered name or ``pkg.mod:Class``) with its settings, and the rules that
  depend on it: which channels an input is read with (:meth:`Task.prepare`), the clean image's shape
  (:meth:`Task.x_shape`), whether an input size fits (:meth:`Task.check`), the operator (:meth:`Task.build`);
* :func:`restore_batch` -- observe (restore mode) or degrade (evaluate mode), sample K per image with
  :func:`sample_batch`, and compute the metrics.

Scales: images on ``[0, 1]`` in and out; inside, ``[-1, 1]``. ``sigma_y`` is the observation noise std
on the ``[0, 1]`` scale (as the paper and job files quote it); the sampler gets ``2 * sigma_y``.

Randomness: image ``key``'s k-th sample draws from ``image_generator(seed, key)`` (k = 0) or
``image_generator(seed, key, k)`` (k > 0), so sample 0 of a K-sample run equals the 1-sample run; the
observation noise of evaluate mode draws from ``image_generator(seed, key, "noise")``. Results do not
depend on the batch an image lands in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ddnm import metrics
from ddnm.canvas import Canvas  # noqa: F401  (re-exported: ddnm.restoration.Canvas, ddnm.api.Canvas)
from ddnm.operators import TASKS, Operator, build, is_custom, load_operator_class
from ddnm.sampling import image_generator, maskshift_sample
from ddnm.sampling.schedule import model_alpha_bar
from ddnm.solvers import Sampling

MODES = ("evaluate", "restore")
LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601 weights: an RGB input for a one-channel model is read as its luma (Pillow's "L")."""


# ----------------------------------------------------------------------------------------------- task
@dataclass(frozen=True)
class Task:
    """A task and its settings (per-image ``masks`` travel with the batch, not here).

    ``name`` is a registered task name or a ``"package.module:Class"`` path; ``settings`` are the
    task's settings, converted to their declared types when the task declares them.
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, task: str | Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> Task:
        """From a name (plus ``settings``) or a ``{"task": name, **settings}`` dict."""
        settings = dict(settings or {})
        if isinstance(task, Mapping):
            spec = dict(task)
            if "task" not in spec:
                raise ValueError(f"task spec needs a 'task' key, got keys {sorted(spec)}")
            task = spec.pop("task")
            settings = {**spec, **settings}
        if not isinstance(task, str):
            raise ValueError(f"task must be a task name, a spec dict or an Operator, "
                             f"got {type(task).__name__}")
        if task in TASKS:
            info = TASKS[task]
            typed = info.resolve(**{k: v for k, v in settings.items() if k != "masks"})
            settings = {k: typed[k] for k in settings if k != "masks"}
        elif not is_custom(task):
            raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)} or 'package.module:Class'")
        return cls(task, settings)

    @property
    def observes_grey(self) -> bool:
        """Whether restore mode reads a grey image (colorization, old photos) rather than RGB."""
        if self.name in TASKS:
            return TASKS[self.name].observes_grey
        return bool(getattr(load_operator_class(self.name), "observes_grey", False))

    def prepare(self, images: torch.Tensor, *, mode: str, model_channels: int) -> torch.Tensor:
        """Inputs ``(B, C, H, W)`` on ``[0, 1]`` as decoded -> the channels the task and model take.

        evaluate: the clean image in the model's channels (grey repeated to RGB, RGB to luma for a
        one-channel model). restore: grey observations stay grey for a task that observes grey, and
        are repeated to RGB for every other task.
        """
        _check_mode(mode)
        c = images.shape[1]
        if mode == "evaluate":
            h, w = self.modcrop(images.shape[-2:])
            images = images[..., :h, :w]
        return match_channels(images, model_channels if mode == "evaluate" else (
            c if self.observes_grey else 3))

    def modcrop(self, size: Sequence[int]) -> tuple[int, int]:
        """Evaluate mode's ground-truth crop: ``(H, W)`` -> the largest ``(h, w)`` whose sides the task's
        ``scale`` divides (the top-left "modcrop" of SR papers); unchanged when they do. (Operators
        that need special sizes, block and Walsh CS, are padded instead: :meth:`padded_size`.)"""
        h, w = (int(v) for v in size)
        m = 1
        for name in ("scale",):
            v = self.settings.get(name, TASKS[self.name].settings.get(name, (1,))[0]
                                  if self.name in TASKS else 1)
            if isinstance(v, int | float) and float(v).is_integer() and v >= 1:
                m = math.lcm(m, int(v))
        return (max(h - h % m, min(h, m)), max(w - w % m, min(w, m)))

    def padded_size(self, size: Sequence[int]) -> tuple[int, int]:
        """The (H', W') the operator is built at for a clean image of (H, W): the same, or the
        smallest larger size an operator with special sizes is defined on (block / Walsh CS)."""
        size = (int(size[0]), int(size[1]))
        return TASKS[self.name].padded_size(size, **self.settings) if self.name in TASKS else size

    def x_shape(self, image_shape: Sequence[int], *, mode: str, model_channels: int) -> tuple[int, int, int]:
        """The clean image's ``(C, H, W)`` for a prepared input of ``image_shape`` ``(C', h, w)``: in
        evaluate mode the image's own, padded to :meth:`padded_size`."""
        _check_mode(mode)
        shape = tuple(int(v) for v in image_shape)
        if mode == "evaluate":
            return (shape[0], *self.padded_size(shape[1:]))  # type: ignore[return-value]
        if self.name in TASKS:
            return TASKS[self.name].x_shape_from_observation(shape, **self.settings)
        return (model_channels, *shape[1:])

    def check(self, image_shape: Sequence[int], *, mode: str, model_channels: int) -> str | None:
        """Why a prepared input of ``image_shape`` cannot be restored with this task, or None."""
        h, w = image_shape[1:]
        try:
            x_shape = self.x_shape(image_shape, mode=mode, model_channels=model_channels)
            if self.name in TASKS:
                TASKS[self.name].validate(x_shape, **self.settings)
        except NotImplementedError as e:
            return str(e)
        except (ValueError, TypeError) as e:
            return f"size {w}x{h} does not fit the task {self.name}: {e}"
        return None

    def build(self, x_shape: Sequence[int], *, device=None, masks: torch.Tensor | None = None) -> Operator:
        """The operator for clean images of ``x_shape``; ``masks`` (B or 1, 1, H, W) per image."""
        extra = {} if masks is None else {"masks": masks}
        return build(self.name, x_shape=x_shape, device=device, **dict(self.settings), **extra)


def match_channels(images: torch.Tensor, want: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, want, H, W): grey repeated, RGB to luma (:data:`LUMA`), else unchanged."""
    c = images.shape[1]
    if c == want:
        return images
    if c == 1:
        return images.expand(-1, want, -1, -1)
    if want == 1 and c == 3:
        w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    raise ValueError(f"images with {c} channels cannot be read as {want}-channel images")


def pad_reflect(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) >= it, padded at the bottom and right by reflection (replication
    where a pad is as large as the side)."""
    H, W = (int(v) for v in size)
    h, w = images.shape[-2:]
    pad = (0, W - w, 0, H - h)
    mode = "reflect" if H - h < h and W - w < w else "replicate"
    return torch.nn.functional.pad(images, pad, mode=mode)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# -------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True, kw_only=True)
class BatchSamples:
    """Result of :func:`sample_batch`."""

    x: torch.Tensor
    """(B, C, H, W) mean of the K samples' final x0, ``[-1, 1]`` scale, not clamped."""
    std: torch.Tensor | None
    """(B, C, H, W) per-pixel std over the K samples clamped to ``[0, 1]`` (None when K = 1)."""
    model_calls: int
    """Model calls per sample (a K-sample batch evaluates the model on B*K images per call); with
    mask-shift, per window."""
    canvas: str = "whole"
    """How the canvas was sampled: "whole", "tiled" or "maskshift"."""
    tiles: int = 1
    """Model inputs per step per image: 1 whole, else tiles (mask-shift: windows, each ``model_calls``)."""


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
    sampling: Sampling,
    alpha_bar: torch.Tensor | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> BatchSamples:
    """K = ``sampling.samples`` samples for each of B observations in one batched pass of the solver.

    model, op and y on one device; op built for the B images (per-image buffers are repeated with
    ``op.select``). ``sampling``: the solver and its settings (validated when it was built); the
    sampler state is float64 when the model computes in fp64 or y is float64, else float32 (a bf16/fp16
    model casts inside its adapter). alpha_bar defaults to the schedule that travels with the model
    (``model.alpha_bar()``). The canvas (whole, tiled or mask-shift) is ``sampling.canvas``: tiles wrap
    the model for any solver; mask-shift calls the solver window by window.
    run under ``torch.no_grad()``: a solver that needs gradients enables them where it needs them.
    """
    if len(keys) != y.shape[0]:
        raise ValueError(f"keys must hold one key per image: got {len(keys)} for a batch of {y.shape[0]}")
    solver, canvas, samples = sampling.info, sampling.canvas, sampling.samples
    refusal = solver.refusal(op)
    if refusal:
        raise ValueError(refusal)
    b = y.shape[0]
    y = y.to(sampling.state_dtype(y))
    if samples > 1:
        idx = [i for i in range(b) for _ in range(samples)]
        y = y[idx]
        op = op.select(idx) if hasattr(op, "select") else op
    abar = model_alpha_bar(model) if alpha_bar is None else alpha_bar
    kind = canvas.resolve(model, op.x_shape)
    gens = generators_for(keys, sampling.seed, samples, y.device)
    tiles = canvas.tiles(model, op.x_shape)

    def run(eps, y, op, abar, gens, callback=None):
        return solver.run(eps, y, op, abar, gens, sampling, callback)

    if kind == "maskshift":
        if callback is not None:
            raise ValueError("callback is not supported with canvas='maskshift'")
        T = canvas.side(model)
        ms = maskshift_sample(model, y, op, abar, window=T,
                              stride=T - (T // 2 if canvas.overlap is None else canvas.overlap),
                              window_batch=max(1, canvas.tile_batch // y.shape[0]), generators=gens,
                              solve=run)
        x, calls, tiles = ms.x, ms.model_calls // ms.windows, ms.windows
    else:
        out = run(canvas.tiled_eps(model) if kind == "tiled" else model, y, op, abar, gens, callback)
        x, calls = out.x, out.model_calls
    xs = x.view(b, samples, *x.shape[1:])
    std = ((xs.clamp(-1, 1) + 1) / 2).std(dim=1) if samples > 1 else None
    return BatchSamples(x=xs.mean(dim=1), std=std, model_calls=calls, canvas=kind, tiles=tiles)


# ------------------------------------------------------------------------------------------- restore
METRICS = ("psnr", "ssim", "consistency", "consistency_clamped")
"""The per-image metrics :func:`restore_batch` computes (psnr and ssim in evaluate mode only)."""


@dataclass(frozen=True, kw_only=True)
class BatchRestoration:
    """Result of :func:`restore_batch`, on the images' device."""

    images: torch.Tensor
    """(B, C, H, W) float32 on ``[0, 1]``: the clamped mean of the K samples."""
    std: torch.Tensor | None
    """(B, C, H, W) per-pixel std over the K samples on ``[0, 1]``, or None when K = 1."""
    observations: torch.Tensor
    """y (leading dim B) on the ``[-1, 1]`` scale, as the operator returns it."""
    observation_images: torch.Tensor
    """``op.y_to_image(y)`` mapped to ``[0, 1]``, for display."""
    metrics: dict[str, torch.Tensor]
    """name -> (B,) float64, the names of :data:`METRICS` that apply to the mode."""
    model_calls: int
    """Model calls per sample."""
    canvas: str = "whole"
    """How the canvas was sampled (:attr:`BatchSamples.canvas`)."""
    tiles: int = 1
    """Model inputs per step per image (:attr:`BatchSamples.tiles`)."""


@torch.no_grad()
def restore_batch(
    model,
    op: Operator,
    images: torch.Tensor,
    *,
    mode: str,
    keys: Sequence[str],
    sampling: Sampling,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> BatchRestoration:
    """Restore B prepared images (:meth:`Task.prepare`) with the solver of ``sampling``.

    images: (B, C, H, W) on ``[0, 1]`` on the model's device. evaluate mode: clean images, degraded
    here (``y = A x + 2 sigma_y n``, paper eq. 16) and scored against (PSNR, SSIM); restore mode:
    observations as the user has them (``y = op.observe(image)``). op: built for these images
    (:meth:`Task.build`). Consistency ``||A x0 - y||`` is recorded before and after clamping x0.
    sampling: solver, steps, noise, samples, seed and canvas (:class:`ddnm.solvers.Sampling`).
    """
    _check_mode(mode)
    h, w = images.shape[-2:]
    truth = images.float()
    if mode == "evaluate" and tuple(op.x_shape[1:]) != (h, w):  # an operator of special sizes:
        images = pad_reflect(truth, op.x_shape[1:])            # pad, restore, crop back
    pm1 = images.float() * 2 - 1
    if mode == "evaluate":
        y = evaluate_observation(op, pm1, sigma_y=sampling.sigma_y, seed=sampling.seed, keys=keys)
    else:
        y = op.observe(pm1)
    out = sample_batch(model, op, y, keys=keys, sampling=sampling, callback=callback)
    x = out.x.float()  # (B, C, H, W) [-1, 1], mean of K samples, unclamped
    y = y.float()
    scores = {"consistency": metrics.consistency(op, x, y),  # on the operator's whole (padded) canvas
              "consistency_clamped": metrics.consistency(op, x.clamp(-1, 1), y)}
    view = (op.y_to_image(y).float().clamp(-1, 1) + 1) / 2
    std = None if out.std is None else out.std.float()
    if mode == "evaluate":
        x, std = x[..., :h, :w], None if std is None else std[..., :h, :w]
        if view.shape[-2:] == op.x_shape[1:]:
            view = view[..., :h, :w]
    restored = (x.clamp(-1, 1) + 1) / 2
    if mode == "evaluate":
        scores["psnr"] = metrics.psnr(restored, truth)
        scores["ssim"] = metrics.ssim(restored, truth)
    return BatchRestoration(images=restored, std=std,
                            observations=y, observation_images=view, metrics=scores,
                            model_calls=out.model_calls, canvas=out.canvas, tiles=out.tiles)
