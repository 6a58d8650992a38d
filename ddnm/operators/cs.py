"""Compressed sensing: keep ``ratio`` of the coefficients of an orthonormal transform.

``cs_walsh``: the orthonormal Walsh-Hadamard transform of each channel over its ``H * W`` pixels
(natural / Sylvester order, row-major flattening), then a seeded random permutation; the first
``round(ratio * H * W)`` permuted coefficients are kept (the same for every channel). Implemented as
the separable 2-D transform ``H_H X H_W^T``: with Sylvester matrices ``H_H (x) H_W = H_{HW}``, so this is
exactly the 1-D transform of the flattened image, and it needs ``H`` and ``W`` to be powers of two.

``cs_block``: each ``b x b`` block (``b = 32`` by default) of each channel is multiplied by one seeded
random orthogonal ``b^2 x b^2`` matrix (QR of a Gaussian matrix, signs fixed so that ``R`` has a
positive diagonal) and its first ``round(ratio * b^2)`` rows are kept.

Both have singular values 1 on the kept coefficients and 0 elsewhere; ``y`` is not an image
(``y_to_image`` shows ``A_pinv y``) and there is no restore-from-image mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SVDOperator
from .blocks import BlockBasisOperator


def hadamard(n: int) -> Tensor:
    """Orthonormal Sylvester Hadamard matrix ``(n, n)`` (float64); ``n`` a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h, base)
    return h / n**0.5


def kept_count(ratio: float, n: int, what: str) -> int:
    m = round(ratio * n)
    if not 0 < ratio <= 1 or m < 1:
        raise ValueError(
            f"ratio={ratio} keeps {m} of the {n} coefficients of {what}; need ratio in (0, 1] keeping >= 1"
        )
    return m


class WalshCS(SVDOperator):
    """Walsh-Hadamard CS: ``(B, C, H, W)`` -> ``(B, C, m)``, ``m = round(ratio * H * W)``."""

    name = "cs_walsh"

    def __init__(self, x_shape: Sequence[int], ratio: float = 0.25, seed: int = 0) -> None:
        super().__init__(x_shape)
        C, H, W = self.x_shape
        if H & (H - 1) or W & (W - 1):
            raise ValueError(f"cs_walsh needs H and W powers of two, got H={H}, W={W}")
        self.m = kept_count(ratio, H * W, f"a {H}x{W} channel")
        perm = torch.randperm(H * W, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("Hh", hadamard(H))
        self.register_buffer("Hw", hadamard(W))
        self.register_buffer("perm", perm)

    def _grid(self, x: Tensor) -> Tensor:
        """Permuted Walsh coefficients ``(B, C, H*W)``."""
        c = self._buf("Hh", x) @ x @ self._buf("Hw", x)  # Sylvester matrices are symmetric
        return c.flatten(2)[..., self.perm.to(x.device)]

    def _inverse(self, g: Tensor) -> Tensor:
        C, H, W = self.x_shape
        z = torch.empty_like(g)
        z[..., self.perm.to(g.device)] = g
        z = z.reshape(g.shape[0], C, H, W)
        return self._buf("Hh", z) @ z @ self._buf("Hw", z)

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return self._grid(x)[..., : self.m]

    def A_pinv(self, y: Tensor) -> Tensor:
        return self._inverse(self.Ut(y).reshape(y.shape[0], self.x_shape[0], -1))

    def Vt(self, x: Tensor) -> Tensor:
        return self._grid(x).reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        return self._inverse(c.reshape(c.shape[0], self.x_shape[0], -1))

    def U(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], self.x_shape[0], -1)[..., : self.m]

    def Ut(self, y: Tensor) -> Tensor:
        C, H, W = self.x_shape
        g = torch.zeros(y.shape[0], C, H * W, dtype=y.dtype, device=y.device)
        g[..., : self.m] = y
        return g.reshape(y.shape[0], -1)

    def singulars(self) -> Tensor:
        C, H, W = self.x_shape
        s = torch.zeros(C, H * W, dtype=self._ref.dtype, device=self._ref.device)
        s[:, : self.m] = 1.0
        return s.reshape(-1)

    def y_to_image(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)


def random_orthogonal(n: int, seed: int) -> Tensor:
    """Seeded random orthogonal ``(n, n)`` float64 matrix: QR of a Gaussian, ``diag(R) > 0``."""
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


class BlockCS(BlockBasisOperator):
    """Block CS: ``(B, C, H, W)`` -> ``(B, C, H/b, W/b, m)``, ``m = round(ratio * b^2)``.

    The block-basis operator with a seeded random orthogonal basis (rows = measurement vectors).
    """

    name = "cs_block"

    def __init__(self, x_shape: Sequence[int], block: int = 32, ratio: float = 0.25, seed: int = 0) -> None:
        _, H, W = (int(v) for v in x_shape)
        if int(block) != block or block < 1 or H % block or W % block:
            raise ValueError(f"block={block} must be a positive integer dividing H={H} and W={W}")
        b = int(block)
        m = kept_count(ratio, b * b, f"a {b}x{b} block")
        # rows of Phi are the measurement vectors: Phi = Q^T of the random orthogonal Q
        super().__init__(x_shape, block=b, basis=random_orthogonal(b * b, seed).T.contiguous(), kept=m)

    @property
    def Phi(self) -> Tensor:
        """The ``(b^2, b^2)`` measurement basis (rows), the first ``m`` rows observed."""
        return self.Q

    def y_to_image(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)
