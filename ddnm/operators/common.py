"""Helpers shared by the operator families: block views, an orthonormal basis with a given first row,
checks of an observed image, and the ``quirks`` switch of the reference code's matrices."""

from __future__ import annotations

import torch
from torch import Tensor

REFERENCE_CUTOFF = 3e-2
"""The public DDNM code's absolute cut-off on 1-D singular values (``quirks="reference"``)."""


def blocks(x: Tensor, s: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H/s, W/s, s*s)``: each ``s x s`` block flattened row-major."""
    B, C, H, W = x.shape
    b = x.reshape(B, C, H // s, s, W // s, s).permute(0, 1, 2, 4, 3, 5)
    return b.reshape(B, C, H // s, W // s, s * s)


def unblocks(b: Tensor, s: int) -> Tensor:
    """``(B, C, h, w, s*s)`` -> ``(B, C, h*s, w*s)``, the inverse of :func:`blocks`."""
    B, C, h, w, _ = b.shape
    return b.reshape(B, C, h, w, s, s).permute(0, 1, 2, 4, 3, 5).reshape(B, C, h * s, w * s)


def basis_with_first_row(e: Tensor) -> Tensor:
    """Orthonormal ``(n, n)`` matrix whose first row is the unit vector ``e`` (Householder, symmetric)."""
    n = e.shape[-1]
    e1 = torch.zeros_like(e)
    e1[0] = 1.0
    v = e - e1
    vv = float(v @ v)
    eye = torch.eye(n, dtype=e.dtype)
    return eye if vv < 1e-30 else eye - 2.0 * torch.outer(v, v) / vv


def check_observed(name: str, image: Tensor, want: tuple[int, ...]) -> Tensor:
    """``image`` if it is ``(B, *want)``, else a ValueError naming the task and both shapes."""
    if image.dim() != len(want) + 1 or tuple(image.shape[1:]) != tuple(want):
        raise ValueError(f"{name}: observed image must be (B, {', '.join(map(str, want))}), "
                         f"got {tuple(image.shape)}")
    return image


def quirks(value: str | None) -> bool:
    """The ``quirks`` setting: None (exact operators) or ``"reference"`` (the public code's matrices)."""
    if value not in (None, "reference"):
        raise ValueError(f"quirks must be None or 'reference', got {value!r}")
    return value == "reference"
