"""Inpainting: ``y = x * mask`` (``1`` = keep), one mask for the batch or one per image.

``y`` keeps ``x``'s shape (missing pixels are 0), so an observed image with holes is ``y`` directly and
``A_pinv`` is the mask itself. SVD: ``V = I``, ``U = I``, singular values = the mask (0/1), per image
``(B, D)`` when the masks are per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import PixelBasisOperator


class Inpaint(PixelBasisOperator):
    """``y = x * mask`` for images ``(B, C, H, W)``.

    Args:
        x_shape: ``(C, H, W)``.
        mask: 0/1 tensor ``(B', C', H, W)`` with ``B'`` in ``{1, B}`` and ``C'`` in ``{1, C}``
            (see :func:`ddnm.operators.masks.resolve_mask` for files, random and box masks).
    """

    name = "inpaint"
    batched_buffers = ("mask",)

    def __init__(self, x_shape: Sequence[int], mask: Tensor) -> None:
        super().__init__(x_shape)
        C, H, W = self.x_shape
        if mask.dim() != 4 or mask.shape[1] not in (1, C) or tuple(mask.shape[2:]) != (H, W):
            raise ValueError(f"mask must have shape (B, 1 or {C}, {H}, {W}), got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(torch.float64) if not mask.is_floating_point() else mask)

    def _mask(self, like: Tensor) -> Tensor:
        self._check_batch(like.shape[0])
        return self._buf("mask", like)

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return x * self._mask(x)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y * self._mask(y)

    def singulars(self) -> Tensor:
        m = self.mask.expand(-1, *self.x_shape)
        return m.reshape(-1) if m.shape[0] == 1 else m.reshape(m.shape[0], -1)

    def observe(self, image: Tensor) -> Tensor:
        """An image with holes ``(B, C, H, W)`` -> ``image * mask`` (hole contents are ignored)."""
        self._check_x(image)
        return image * self._mask(image)
