"""Inpainting masks: from files, bytes, arrays, seeded random pixels and boxes. ``1`` = keep.

Masks are float tensors of 0/1 with shape ``(B', C', H, W)``: ``B'`` is 1 (one mask for the batch) or
the batch size (one per image), ``C'`` is 1 (all channels) or the image's channel count.

Files are read from local paths or raw bytes only (the cluster layer fetches remote objects):

* PNG (any format Pillow reads): converted to grey, pixel ``> 127`` keeps,
* ``.npy``: bool arrays as they are, ``uint8`` arrays ``> 127`` keeps (0/1 arrays: 1 keeps), other
  numbers ``> 0.5`` keeps;
  shape ``(H, W)``, ``(C', H, W)`` or ``(B', C', H, W)``.

A mask of the wrong size is an error naming the file and both sizes; masks are never resized.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

_NPY_MAGIC = b"\x93NUMPY"

MASK_KEYWORDS = ("random", "none", "box", "center")
"""Built-in masks of the ``mask`` setting; any other string names a mask file (or a folder of them)."""


def is_mask_file(value: Any) -> bool:
    """Whether a ``mask`` setting names a file or folder (any string but a keyword) rather than a
    built-in mask, None or an array."""
    return isinstance(value, str | os.PathLike) and str(value).lower() not in MASK_KEYWORDS


def _binarize(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if arr.dtype == np.uint8:  # 0/255 images keep above 127; 0/1 arrays keep their ones
        return (arr > (127 if arr.size and arr.max() > 1 else 0)).astype(np.float64)
    return (arr.astype(np.float64) > 0.5).astype(np.float64)


def _as_4d(t: Tensor, channels: int | None, source: str) -> Tensor:
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"mask {source}: expected (H, W), (C, H, W) or (B, C, H, W), got {tuple(t.shape)}")
    if channels is not None and t.shape[1] not in (1, channels):
        raise ValueError(f"mask {source}: has {t.shape[1]} channels, expected 1 or {channels}")
    return t


def _check_size(t: Tensor, H: int, W: int, source: str) -> Tensor:
    if tuple(t.shape[-2:]) != (H, W):
        h, w = t.shape[-2:]
        raise ValueError(f"mask {source}: size {h}x{w} (HxW) does not match the image size {H}x{W}")
    return t


def read_mask(data: bytes, source: str = "<bytes>") -> Tensor:
    """A PNG (any format Pillow reads) or ``.npy`` mask of any size from its bytes -> ``(B', C', h, w)``
    float 0/1. Raises ValueError starting with ``mask <source>:``."""
    if not data:
        raise ValueError(f"mask {source}: empty file")
    if data[:6] == _NPY_MAGIC or source.lower().endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise ValueError(f"mask {source}: not a valid .npy array ({type(e).__name__}: {e})") from e
        m = torch.from_numpy(_binarize(np.asarray(arr)))
    else:
        from PIL import Image, ImageOps

        try:
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L")
        except Exception as e:  # Pillow raises several types for bad data
            raise ValueError(f"mask {source}: not a PNG or .npy mask ({e})") from e
        m = torch.from_numpy(_binarize(np.asarray(img, dtype=np.uint8)))
    return _as_4d(m, None, source)


def _read(path_or_bytes: str | os.PathLike | bytes) -> tuple[Tensor, str]:
    """Read a PNG or ``.npy`` mask of any size -> (``(B', C', h, w)`` float 0/1, source name)."""
    if isinstance(path_or_bytes, bytes | bytearray):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        source = os.fspath(path_or_bytes)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"mask {source}: cannot read it ({e})") from e
    return read_mask(data, source), source


def load_mask(path_or_bytes: str | os.PathLike | bytes, H: int, W: int) -> Tensor:
    """Read a mask file (PNG or ``.npy``, path or raw bytes) -> float ``(B', C', H, W)`` of 0/1.

    Raises ValueError naming the file when its size is not ``H x W`` or it cannot be read.
    """
    m, source = _read(path_or_bytes)
    return _check_size(m, H, W, source)


def random_mask(H: int, W: int, keep: float = 0.5, seed: int = 0) -> Tensor:
    """Keep exactly ``round(keep * H * W)`` pixels chosen by a seeded permutation -> ``(1, 1, H, W)``.

    The same pixels are kept in every channel (DDRM's 50% random-pixel benchmark).
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(H * W, generator=g)
    m = torch.zeros(H * W, dtype=torch.float64)
    m[perm[: round(keep * H * W)]] = 1.0
    return m.reshape(1, 1, H, W)


def box_mask(H: int, W: int, box: Sequence[int]) -> Tensor:
    """A rectangular hole ``box = (top, left, height, width)`` (pixels, 0 inside) -> ``(1, 1, H, W)``."""
    if len(box) != 4:
        raise ValueError(f"box must be (top, left, height, width), got {tuple(box)}")
    top, left, height, width = (int(v) for v in box)
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > H or left + width > W:
        raise ValueError(f"box={tuple(box)} does not fit inside the image of size {H}x{W} (HxW)")
    m = torch.ones(1, 1, H, W, dtype=torch.float64)
    m[..., top : top + height, left : left + width] = 0.0
    return m


def center_mask(H: int, W: int, fraction: float = 0.5) -> Tensor:
    """A centred hole covering ``fraction`` of the height and of the width -> ``(1, 1, H, W)``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    h, w = max(1, round(fraction * H)), max(1, round(fraction * W))
    return box_mask(H, W, ((H - h) // 2, (W - w) // 2, h, w))


def resolve_mask(
    x_shape: Sequence[int],
    *,
    mask: Any = None,
    masks: Any = None,
    keep: float = 0.5,
    seed: int = 0,
    box: Sequence[int] | None = None,
    fraction: float = 0.5,
    grids: Sequence[tuple[int, int]] = (),
    default: str = "random",
) -> Tensor:
    """Turn the ``mask`` / ``masks`` settings into a float64 0/1 tensor ``(B', C', H, W)``.

    ``mask``: ``None`` (= ``default``), ``"random"`` (``keep``, ``seed``), ``"none"`` (keep all),
    ``"box"`` (``box``), ``"center"`` (``fraction``), a file path or bytes, or an array / tensor.
    ``masks``: per-image masks ``(B, 1, H, W)`` or ``(B, C, H, W)`` from the caller (give ``mask`` or
    ``masks``, not both). ``grids``: extra accepted mask sizes ``(h, w)`` (old photos accept a mask at the
    photo's size); the caller expands those.
    """
    C, H, W = (int(v) for v in x_shape)
    if masks is not None and mask is not None:
        raise ValueError("give either mask or masks, not both")
    if masks is not None:
        mask, source = masks, "masks"
    else:
        source = "mask"
    sizes = [(H, W), *grids]
    if mask is None and masks is None:
        mask = default
    if isinstance(mask, str) and mask.lower() in MASK_KEYWORDS:
        mask = mask.lower()
    if isinstance(mask, str) and mask == "random":
        return random_mask(H, W, keep, seed)
    if isinstance(mask, str) and mask == "none":
        return torch.ones(1, 1, H, W, dtype=torch.float64)
    if isinstance(mask, str) and mask == "box":
        if box is None:
            raise ValueError('mask="box" needs box=(top, left, height, width)')
        return box_mask(H, W, box)
    if isinstance(mask, str) and mask == "center":
        return center_mask(H, W, fraction)
    if isinstance(mask, str | os.PathLike | bytes | bytearray):
        m, source = _read(mask)
    elif isinstance(mask, np.ndarray):
        m = torch.from_numpy(_binarize(mask))
    elif isinstance(mask, Tensor):
        m = mask.detach().to("cpu")
        m = m.to(torch.float64) if m.dtype == torch.bool else (m > 0.5).to(torch.float64)
    else:
        raise ValueError(
            f"{source} must be 'random', 'none', 'box', 'center', a file path, bytes or an array, "
            f"got {type(mask).__name__}: {mask!r}"[:300]
        )
    m = _as_4d(m, C, source)
    if tuple(m.shape[-2:]) not in sizes:
        h, w = m.shape[-2:]
        ok = " or ".join(f"{a}x{b}" for a, b in sizes)
        raise ValueError(f"mask {source}: size {h}x{w} (HxW) does not match the image size {ok}")
    return m
