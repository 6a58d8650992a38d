"""One operator for every "orthonormal basis per block, first k coefficients kept" degradation.

Each ``b x b`` block of each channel, flattened row-major to ``x_b`` (length ``b^2``), is expanded in a
fixed orthonormal basis ``Q`` (rows = basis vectors) and its first ``k`` coefficients are kept, scaled by
one singular value ``sigma``:  ``y_b = sigma Q[:k] x_b``. So ``V`` per block is ``Q^T``, the singular
values are ``sigma`` on the first ``k`` coefficients and 0 on the rest, and
``A_pinv y = Q[:k]^T y_b / sigma`` per block.

* ``sr_avgpool``: ``k = 1``, ``Q``'s first row ``1/s 1``, ``sigma = 1/s`` (the block mean, DDRM appendix);
  ``y`` is the low-resolution image ``(B, C, H/s, W/s)``.
* ``cs_block``: ``Q`` a seeded random orthogonal matrix, ``k = round(ratio b^2)``, ``sigma = 1``;
  ``y`` is ``(B, C, H/b, W/b, k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SVDOperator
from .common import blocks, unblocks


class BlockBasisOperator(SVDOperator):
    """``y_b = sigma Q[:k] x_b`` on every ``b x b`` block; ``b`` must divide ``H`` and ``W``.

    Args:
        x_shape: ``(C, H, W)``.
        block: the block side ``b``.
        basis: ``(b^2, b^2)`` orthonormal float64 matrix, rows are the basis vectors.
        kept: ``k``, the number of leading coefficients observed (``1 <= k <= b^2``).
        sigma: the one non-zero singular value.
        image_y: ``y`` as ``(B, C, H/b, W/b)`` (only with ``k = 1``) instead of ``(..., k)``.
    """

    def __init__(self, x_shape: Sequence[int], *, block: int, basis: Tensor, kept: int, sigma: float = 1.0,
                 image_y: bool = False) -> None:
        super().__init__(x_shape)
        C, H, W = self.x_shape
        if int(block) != block or block < 1 or H % block or W % block:
            raise ValueError(f"block={block} must be a positive integer dividing H={H} and W={W}")
        b = int(block)
        if tuple(basis.shape) != (b * b, b * b):
            raise ValueError(f"basis must be ({b * b}, {b * b}) for block={b}, got {tuple(basis.shape)}")
        if not 1 <= kept <= b * b or (image_y and kept != 1):
            raise ValueError(f"kept must be in [1, {b * b}] (1 with image_y), got {kept}")
        self.block, self.m, self.sigma, self.image_y = b, int(kept), float(sigma), image_y
        self.register_buffer("Q", basis.to(torch.float64))

    def _grid(self) -> tuple[int, int, int]:
        C, H, W = self.x_shape
        return C, H // self.block, W // self.block

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        y = (blocks(x, self.block) @ self._buf("Q", x)[: self.m].T) * self.sigma
        return y[..., 0] if self.image_y else y

    def A_pinv(self, y: Tensor) -> Tensor:
        y = y[..., None] if self.image_y else y
        return unblocks((y / self.sigma) @ self._buf("Q", y)[: self.m], self.block)

    def Vt(self, x: Tensor) -> Tensor:
        return (blocks(x, self.block) @ self._buf("Q", x).T).reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        c = c.reshape(c.shape[0], *self._grid(), self.block**2)
        return unblocks(c @ self._buf("Q", c), self.block)

    def U(self, c: Tensor) -> Tensor:
        c = c.reshape(c.shape[0], *self._grid(), self.block**2)
        return c[..., 0] if self.image_y else c[..., : self.m]

    def Ut(self, y: Tensor) -> Tensor:
        y = y[..., None] if self.image_y else y
        c = torch.zeros(*y.shape[:-1], self.block**2, dtype=y.dtype, device=y.device)
        c[..., : self.m] = y
        return c.reshape(y.shape[0], -1)

    def singulars(self) -> Tensor:
        s = torch.zeros(*self._grid(), self.block**2, dtype=self.Q.dtype, device=self.Q.device)
        s[..., : self.m] = self.sigma
        return s.reshape(-1)
