"""Separable operators ``A x = M_h X M_w^T`` per channel, and the 1-D matrices they are built from.

With the 1-D SVDs ``M_h = U_h S_h V_h^T`` (``h x H``) and ``M_w = U_w S_w V_w^T`` (``w x W``), the 2-D
operator is the Kronecker product and its SVD is ``(U_h (x) U_w) (S_h (x) S_w) (V_h (x) V_w)^T``
(DDRM appendix D.5): coefficients ``V_h^T X V_w`` on an ``(H, W)`` grid per channel, singular value
``S_h[i] S_w[j]`` at ``(i, j)`` for ``i < h, j < w`` and 0 elsewhere. No dense ``D x D`` matrix is ever
formed; every call is four small matrix products.

Singular values below a cut-off are set to 0 and ``A`` itself is defined with the truncated values
(as the public DDNM / DDRM code does), so ``A A_pinv A = A`` holds exactly:

* default: 2-D singular values ``< cutoff * max`` (``cutoff = 1e-4``): ``A_pinv`` then amplifies
  float32 round-off by at most ``1e4`` while the dropped part of the blur is below ``1e-4`` of its
  largest response (under 8-bit quantisation);
* ``reference_cutoff``: the public code's rule, 1-D singular values ``< 3e-2`` (absolute) set to 0
  before taking products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SVDOperator

PADDINGS = ("reflect", "zero")


def fold_index(j: Tensor, n: int, padding: str) -> tuple[Tensor, Tensor]:
    """Map sample indices ``j`` (any integers) into ``[0, n)`` -> (index, valid).

    ``"reflect"`` is half-sample symmetric (``x[-1] = x[0]``, ``x[n] = x[n - 1]``, period ``2n``) as in
    the public code; ``"zero"`` marks out-of-range samples invalid (their weight is dropped).
    """
    if padding == "reflect":
        k = torch.remainder(j, 2 * n)
        return torch.where(k >= n, 2 * n - 1 - k, k), torch.ones_like(j, dtype=torch.bool)
    if padding == "zero":
        valid = (j >= 0) & (j < n)
        return j.clamp(0, n - 1), valid
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def scatter_matrix(rows: int, n: int, j: Tensor, w: Tensor, padding: str) -> Tensor:
    """``(rows, n)`` float64 matrix with ``M[r, fold(j[r, t])] += w[r, t]``."""
    idx, valid = fold_index(j, n, padding)
    M = torch.zeros(rows, n, dtype=torch.float64)
    M.scatter_add_(1, idx, torch.where(valid, w, torch.zeros_like(w)))
    return M


def conv_matrix(n: int, kernel: Tensor, padding: str = "reflect", drop_last_tap: bool = False) -> Tensor:
    """``(n, n)`` matrix of a same-size 1-D filtering by ``kernel`` (tap ``k // 2`` at the centre).

    ``drop_last_tap`` reproduces the public DDNM/DDRM ``Deblurring`` matrices, whose inner loop
    ``range(i - k//2, i + k//2)`` skips the kernel's last tap.
    """
    k = kernel.numel() - (1 if drop_last_tap else 0)
    i = torch.arange(n)[:, None]
    t = torch.arange(k)[None, :]
    j = i + t - kernel.numel() // 2
    w = kernel.to(torch.float64)[:k].expand(n, k)
    return scatter_matrix(n, n, j, w, padding)


class SeparableSVD(SVDOperator):
    """``A x = M_h X M_w^T`` for each channel of ``(B, C, H, W)``: ``y`` is ``(B, C, h, w)``.

    Args:
        x_shape: ``(C, H, W)``.
        M_h: ``(h, H)`` with ``h <= H``; M_w: ``(w, W)`` with ``w <= W``.
        cutoff: relative cut-off on the 2-D singular values (ignored when ``reference_cutoff``).
        reference_cutoff: absolute cut-off on the 1-D singular values (the public code: 3e-2).
        name: the task name.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        M_h: Tensor,
        M_w: Tensor,
        *,
        cutoff: float = 1e-4,
        reference_cutoff: float | None = None,
        name: str = "separable",
    ) -> None:
        super().__init__(x_shape)
        self.name = name
        C, H, W = self.x_shape
        if M_h.shape[1] != H or M_w.shape[1] != W or M_h.shape[0] > H or M_w.shape[0] > W:
            raise ValueError(
                f"M_h {tuple(M_h.shape)} and M_w {tuple(M_w.shape)} do not fit x_shape {self.x_shape}"
            )
        Uh, Sh, Vht = torch.linalg.svd(M_h.to(torch.float64), full_matrices=True)
        Uw, Sw, Vwt = torch.linalg.svd(M_w.to(torch.float64), full_matrices=True)
        if reference_cutoff is not None:
            Sh = torch.where(Sh < reference_cutoff, torch.zeros_like(Sh), Sh)
            Sw = torch.where(Sw < reference_cutoff, torch.zeros_like(Sw), Sw)
        S = torch.zeros(H, W, dtype=torch.float64)
        S[: Sh.numel(), : Sw.numel()] = torch.outer(Sh, Sw)
        if reference_cutoff is None and cutoff > 0:
            S = torch.where(S < cutoff * S.max(), torch.zeros_like(S), S)
        self.y_hw = (M_h.shape[0], M_w.shape[0])
        self.register_buffer("Uh", Uh)
        self.register_buffer("Uw", Uw)
        self.register_buffer("Vh", Vht.T.contiguous())
        self.register_buffer("Vw", Vwt.T.contiguous())
        self.register_buffer("S", S)

    def Vt(self, x: Tensor) -> Tensor:
        return (self._buf("Vh", x).T @ x @ self._buf("Vw", x)).reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        c = c.reshape(c.shape[0], *self.x_shape)
        return self._buf("Vh", c) @ c @ self._buf("Vw", c).T

    def U(self, c: Tensor) -> Tensor:
        h, w = self.y_hw
        c = c.reshape(c.shape[0], *self.x_shape)[..., :h, :w]
        return self._buf("Uh", c) @ c @ self._buf("Uw", c).T

    def Ut(self, y: Tensor) -> Tensor:
        C, H, W = self.x_shape
        h, w = self.y_hw
        g = self._buf("Uh", y).T @ y @ self._buf("Uw", y)
        c = torch.zeros(y.shape[0], C, H, W, dtype=y.dtype, device=y.device)
        c[..., :h, :w] = g
        return c.reshape(y.shape[0], -1)

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return super().A(x)

    def singulars(self) -> Tensor:
        return self.S.expand(self.x_shape[0], -1, -1).reshape(-1)

    def observe(self, image: Tensor) -> Tensor:
        """The degraded image ``(B, C, h, w)`` is ``y`` itself."""
        want = (self.x_shape[0], *self.y_hw)
        if image.dim() != 4 or tuple(image.shape[1:]) != want:
            shape = ", ".join(map(str, want))
            raise ValueError(f"{self.name}: observed image must be (B, {shape}), got {tuple(image.shape)}")
        return image
