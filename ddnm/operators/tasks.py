"""The registered tasks: settings tables, validation, shape rules and builders (see registry.py)."""

from __future__ import annotations

from typing import Any

from . import blur
from .color import Colorize, grey_weights
from .common import quirks as _quirks
from .cs import BlockCS, WalshCS, kept_count
from .denoise import Identity
from .inpaint import Inpaint
from .masks import resolve_mask
from .old_photo import OldPhoto
from .registry import Settings, TaskInfo, register
from .separable import PADDINGS
from .sr import AvgPoolSR, bicubic_sr

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


def _check_mask(x_shape: Shape, s: dict[str, Any], grids: tuple = (), default: str = "random") -> None:
    _fraction("keep", s["keep"], low_open=False)
    _fraction("fraction", s["fraction"])
    if not isinstance(s["seed"], int):
        raise ValueError(f"seed must be an integer, got {s['seed']!r}")
    resolve_mask(x_shape, grids=grids, default=default, **_mask_kwargs(s))


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
    block_local="scale",
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
    observes_grey=True,
    block_local=1,
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
    block_local=1,
    pixel_buffers=("mask",),
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
    block_local=1,
))


# -- linear filters (bicubic SR, blur) -----------------------------------------------------------------
FILTER_SETTINGS: Settings = {
    "padding": ("reflect", str, "border handling: 'reflect' (half-sample symmetric) or 'zero'"),
    "cutoff": (None, float, "singular values below cutoff * largest are treated as 0 (default 1e-4)"),
    "quirks": (None, str, "'reference': the public DDNM code's matrices (see the module docs); off by "
                          "default"),
}


def _check_filter(s: dict[str, Any]) -> None:
    if s["padding"] not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {s['padding']!r}")
    c = s["cutoff"]
    if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c < 1):
        raise ValueError(f"cutoff must be None or a number in [0, 1), got {c!r}")
    _quirks(s["quirks"])


def _check_size_sigma(s: dict[str, Any], *sigmas: str) -> None:
    _positive_int("size", s["size"])
    for name in sigmas:
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def _check_bicubic(x_shape: Shape, s: dict[str, Any]) -> None:
    _scale_divides(x_shape, s["scale"])
    _check_filter(s)


register(TaskInfo(
    name="sr_bicubic",
    description="super-resolution from antialiased bicubic downsampling (a = -0.5, 4s taps, stride s)",
    settings={"scale": (4, int, "integer down-scaling factor; must divide H and W"), **FILTER_SETTINGS},
    builder=bicubic_sr,
    restore_from_image=True,
    has_svd=True,
    check=_check_bicubic,
    obs_to_x=_lr_to_hr,
))


def _register_blur(name: str, description: str, extra: Settings, sigmas: tuple[str, ...], builder) -> None:
    def check(x_shape: Shape, s: dict[str, Any]) -> None:
        _check_size_sigma(s, *sigmas)
        _check_filter(s)

    register(TaskInfo(
        name=name,
        description=description,
        settings={**extra, **FILTER_SETTINGS},
        builder=builder,
        restore_from_image=True,
        has_svd=True,
        check=check,
        obs_to_x=_same,
    ))


_register_blur(
    "deblur_uniform", "deblurring a separable uniform (box) blur",
    {"size": (9, int, "kernel taps along each axis")}, (), blur.deblur_uniform,
)
_register_blur(
    "deblur_gauss", "deblurring a separable Gaussian blur",
    {"size": (5, int, "kernel taps along each axis"), "sigma": (10.0, float, "Gaussian sigma in pixels")},
    ("sigma",), blur.deblur_gauss,
)
_register_blur(
    "deblur_aniso", "deblurring an anisotropic separable Gaussian blur",
    {
        "size": (9, int, "kernel taps along each axis"),
        "sigma_h": (1.0, float, "Gaussian sigma along the height (vertical) axis"),
        "sigma_w": (20.0, float, "Gaussian sigma along the width (horizontal) axis"),
    },
    ("sigma_h", "sigma_w"), blur.deblur_aniso,
)


# -- compressed sensing --------------------------------------------------------------------------------
def _check_walsh(x_shape: Shape, s: dict[str, Any]) -> None:
    _, H, W = x_shape
    if H & (H - 1) or W & (W - 1):
        raise ValueError(f"cs_walsh needs H and W powers of two (H*W a power of two), got H={H}, W={W}")
    _fraction("ratio", s["ratio"])
    kept_count(s["ratio"], H * W, f"a {H}x{W} channel")
    if not isinstance(s["seed"], int):
        raise ValueError(f"seed must be an integer, got {s['seed']!r}")


def _check_block(x_shape: Shape, s: dict[str, Any]) -> None:
    _, H, W = x_shape
    b = _positive_int("block", s["block"])
    if H % b or W % b:
        raise ValueError(f"block={b} must divide the image height H={H} and width W={W}")
    _fraction("ratio", s["ratio"])
    kept_count(s["ratio"], b * b, f"a {b}x{b} block")
    if not isinstance(s["seed"], int):
        raise ValueError(f"seed must be an integer, got {s['seed']!r}")


CS_SETTINGS: Settings = {
    "ratio": (0.25, float, "fraction of coefficients kept (paper: 0.25)"),
    "seed": (0, int, "seed of the random permutation / orthogonal matrix"),
}

register(TaskInfo(
    name="cs_walsh",
    description="compressed sensing: seeded random subset of Walsh-Hadamard coefficients per channel",
    settings=dict(CS_SETTINGS),
    builder=lambda x_shape, ratio, seed: WalshCS(x_shape, ratio, seed),
    restore_from_image=False,
    has_svd=True,
    check=_check_walsh,
    pad_to=lambda size, s: tuple(1 << max(0, (int(v) - 1).bit_length()) for v in size),
))

register(TaskInfo(
    name="cs_block",
    description="compressed sensing: b x b blocks times a seeded random orthogonal matrix, first rows kept",
    settings={"block": (32, int, "block size in pixels; must divide H and W"), **CS_SETTINGS},
    builder=lambda x_shape, block, ratio, seed: BlockCS(x_shape, block, ratio, seed),
    restore_from_image=False,
    has_svd=True,
    check=_check_block,
    pad_to=lambda size, s: tuple(-(-int(v) // s["block"]) * s["block"] for v in size),
    block_local="block",
))


# -- old photos ------------------------------------------------------------------------------------------
def _check_old_photo(x_shape: Shape, s: dict[str, Any]) -> None:
    _three_channels("old_photo", x_shape)
    _scale_divides(x_shape, s["scale"])
    grey_weights(s["weights"])
    _, H, W = x_shape
    _check_mask(x_shape, s, grids=((H // s["scale"], W // s["scale"]),), default="none")


def _build_old_photo(x_shape: Shape, scale: int, weights: Any, **mask_settings: Any) -> OldPhoto:
    _, H, W = x_shape
    mask = resolve_mask(x_shape, grids=((H // scale, W // scale),), default="none", **mask_settings)
    return OldPhoto(x_shape, mask, scale, weights)


register(TaskInfo(
    name="old_photo",
    description="old-photo restoration: scratches (mask), then grey, then average-pool SR (exact SVD)",
    settings={
        **MASK_SETTINGS,
        "mask": (None, str, "scratch mask at (H, W) or at the photo's (H/scale, W/scale): a PNG/.npy "
                            "file (1 = keep), None/'none' (no scratches), 'random', 'box' or 'center'"),
        "scale": (2, int, "average-pooling factor; must divide H and W"),
        "weights": ("equal", str, "grey weights: 'equal', 'reference', 'luma' or three numbers"),
    },
    builder=_build_old_photo,
    restore_from_image=True,
    has_svd=True,
    check=_check_old_photo,
    obs_to_x=lambda obs, s: (3, obs[1] * s["scale"], obs[2] * s["scale"]),
    observes_grey=True,
))
