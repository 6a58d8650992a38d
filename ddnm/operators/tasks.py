"""The registered tasks: settings tables, validation, shape rules and builders (see registry.py)."""

from __future__ import annotations

from typing import Any

from .color import Colorize, grey_weights
from .denoise import Identity
from .inpaint import Inpaint
from .masks import resolve_mask
from .registry import Settings, TaskInfo, register
from .sr import AvgPoolSR

Shape = tuple[int, int, int]


# -- shared checks ------------------------------------------------------------------------------------
def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _fraction(name: str, v: Any, *, low_open: bool = True) -> float:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and (0 < v <= 1 if low_open else 0 <= v <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], got {v!r}")
    return float(v)


def _scale_divides(x_shape: Shape, scale: Any) -> None:
    _positive_int("scale", scale)
    _, H, W = x_shape
    if H % scale or W % scale:
        raise ValueError(f"scale={scale} must divide the image height H={H} and width W={W}")


def _check_colorize(x_shape: Shape, s: dict[str, Any]) -> None:
    _three_channels("colorize", x_shape)
    grey_weights(s["weights"])


def _three_channels(task: str, x_shape: Shape) -> None:
    if x_shape[0] != 3:
        raise ValueError(f"task {task!r} needs 3-channel images, got x_shape={x_shape}")


def _lr_to_hr(obs: tuple[int, ...], s: dict[str, Any]) -> Shape:
    return (obs[0], obs[1] * s["scale"], obs[2] * s["scale"])


def _same(obs: tuple[int, ...], s: dict[str, Any]) -> Shape:
    return obs  # type: ignore[return-value]


# -- mask settings (inpaint, old_photo) ---------------------------------------------------------------
MASK_SETTINGS: Settings = {
    "mask": (None, str, "None/'random' (keep, seed), 'none', 'box' (box), 'center' (fraction), "
             "or a PNG/.npy file (1 = keep; PNG > 127 keeps)"),
    "masks": (None, object, "per-image mask tensor (B, 1 or C, H, W) from the caller; excludes mask"),
    "keep": (0.5, float, "fraction of pixels kept by mask='random' (DDRM benchmark: 0.5)"),
    "seed": (0, int, "seed of mask='random'"),
    "box": (None, tuple, "hole (top, left, height, width) in pixels for mask='box'"),
    "fraction": (0.5, float, "hole size as a fraction of H and W for mask='center'"),
}


def _mask_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in MASK_SETTINGS}


def _check_mask(x_shape: Shape, s: dict[str, Any], grids: tuple = ()) -> None:
    _fraction("keep", s["keep"], low_open=False)
    _fraction("fraction", s["fraction"])
    if not isinstance(s["seed"], int):
        raise ValueError(f"seed must be an integer, got {s['seed']!r}")
    resolve_mask(x_shape, grids=grids, **_mask_kwargs(s))


# -- the tasks ------------------------------------------------------------------------------------------
register(TaskInfo(
    name="sr_avgpool",
    description="super-resolution from s x s average pooling (block mean)",
    settings={"scale": (4, int, "integer down-scaling factor; must divide H and W")},
    builder=lambda x_shape, scale: AvgPoolSR(x_shape, scale),
    restore_from_image=True,
    has_svd=True,
    check=lambda x_shape, s: _scale_divides(x_shape, s["scale"]),
    obs_to_x=_lr_to_hr,
))

register(TaskInfo(
    name="colorize",
    description="colorization: y = w . (R, G, B) per pixel",
    settings={"weights": ("equal", str, "'equal' (1/3 each), 'reference' (0.3333, 0.3334, 0.3333), "
                                        "'luma' (0.299, 0.587, 0.114) or three numbers")},
    builder=lambda x_shape, weights: Colorize(x_shape, weights),
    restore_from_image=True,
    has_svd=True,
    check=lambda x_shape, s: _check_colorize(x_shape, s),
    obs_to_x=lambda obs, s: (3, obs[1], obs[2]),
))

register(TaskInfo(
    name="inpaint",
    description="inpainting: y = x * mask (1 = keep), one mask for the batch or one per image",
    settings=dict(MASK_SETTINGS),
    builder=lambda x_shape, **s: Inpaint(x_shape, resolve_mask(x_shape, **s)),
    restore_from_image=True,
    has_svd=True,
    check=lambda x_shape, s: _check_mask(x_shape, s),
    obs_to_x=_same,
))

register(TaskInfo(
    name="denoise",
    description="denoising: A = identity, use with sigma_y > 0",
    settings={},
    builder=lambda x_shape: Identity(x_shape),
    restore_from_image=True,
    has_svd=True,
    check=lambda x_shape, s: None,
    obs_to_x=_same,
))
