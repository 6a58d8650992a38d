"""Old-photo restoration: scratches (mask), then grey, then ``s x s`` average pooling, with an exact SVD.

``A x = P(m * (w . x))``: per pixel the grey value ``g = w . x`` is masked (``m`` = 1 keeps, one mask
for all channels), then each ``s x s`` block is averaged. Applying the three pseudo-inverses in reverse
order (as the public code does) is *not* the pseudo-inverse of this chain once a block is partly
masked; this operator uses the exact one.

SVD. Per pixel, ``Q`` (first row ``e = w / ||w||``) splits ``x`` into the grey coefficient
``c0 = e . x`` and two colour coefficients (null space). Per block, ``y_b = (||w|| / s^2) m_b . c0_b``
is a single row with norm ``||w|| sqrt(n_b) / s^2`` (``n_b`` = kept pixels in the block) and unit right
singular vector ``u_b = m_b / sqrt(n_b)``; the block's basis is the Householder reflection ``H_b`` that
maps ``u_b`` to the first axis (identity when ``n_b = 0``, whose singular value is 0). Hence

    A_pinv y = w / ||w||^2 * m * s^2 / n_b * (y replicated over its block)   (0 where n_b = 0).

Masks may be given at the clean image's size ``(H, W)`` or at the photo's size ``(H/s, W/s)``
(scratches drawn on the small photo), in which case each mask pixel covers its ``s x s`` block.
Restore mode reads a grey (or RGB) photo of size ``(H/s, W/s)``: a photo pixel is taken as the mean of
its block's kept pixels, ``y_b = photo_b n_b / s^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SVDOperator
from .color import grey_weights
from .common import basis_with_first_row
from .common import blocks as _blocks
from .common import unblocks as _unblocks


class OldPhoto(SVDOperator):
    """``(B, 3, H, W)`` -> ``(B, 1, H/s, W/s)``; mask ``(B', 1, H, W)`` (or at ``(H/s, W/s)``)."""

    name = "old_photo"
    batched_buffers = ("mask", "nb", "hv", "hvv")

    def __init__(
        self, x_shape: Sequence[int], mask: Tensor, scale: int = 2, weights: str | Sequence[float] = "equal"
    ) -> None:
        super().__init__(x_shape)
        C, H, W = self.x_shape
        if C != 3:
            raise ValueError(f"old_photo needs 3-channel images, got x_shape={self.x_shape}")
        if int(scale) != scale or scale < 1 or H % scale or W % scale:
            raise ValueError(f"scale must be a positive integer dividing H={H} and W={W}, got {scale}")
        self.scale = s = int(scale)
        mask = mask.to(torch.float64)
        if mask.dim() != 4:
            raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        if mask.shape[1] > 1:
            if not bool((mask == mask[:, :1]).all()):
                raise ValueError("old_photo masks must be the same for every channel (give one channel)")
            mask = mask[:, :1]
        if tuple(mask.shape[2:]) == (H // s, W // s) and s > 1:
            mask = mask.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        if tuple(mask.shape[2:]) != (H, W):
            raise ValueError(
                f"mask size {tuple(mask.shape[2:])} matches neither {(H, W)} nor {(H // s, W // s)}"
            )
        w = grey_weights(weights)
        self.register_buffer("w", w)
        self.register_buffer("Q", basis_with_first_row(w / w.norm()))
        self.register_buffer("mask", mask)
        mb = _blocks(mask, s)  # (B', 1, h, w, s^2)
        nb = mb.sum(-1)
        u = mb / nb.clamp(min=1).sqrt()[..., None]
        v = u.clone()
        v[..., 0] -= 1.0
        v = torch.where(nb[..., None] > 0, v, torch.zeros_like(v))
        vv = (v * v).sum(-1)
        trivial = vv < 1e-20
        self.register_buffer("nb", nb)
        self.register_buffer("hv", torch.where(trivial[..., None], torch.zeros_like(v), v))
        self.register_buffer("hvv", torch.where(trivial, torch.ones_like(vv), vv))

    # -- helpers ------------------------------------------------------------------------------------------
    def _house(self, z: Tensor) -> Tensor:
        """Apply each block's Householder reflection to ``z`` ``(B, 1, h, w, s^2)`` (self-inverse)."""
        v, vv = self._buf("hv", z), self._buf("hvv", z)
        return z - 2.0 * v * ((v * z).sum(-1) / vv)[..., None]

    def _grid_shape(self) -> tuple[int, int, int, int]:
        _, H, W = self.x_shape
        s = self.scale
        return 3, H // s, W // s, s * s

    # -- operator -----------------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        self._check_batch(x.shape[0])
        g = torch.einsum("k,bkhw->bhw", self._buf("w", x), x)[:, None] * self._buf("mask", x)
        return F.avg_pool2d(g, self.scale) if self.scale > 1 else g

    def A_pinv(self, y: Tensor) -> Tensor:
        self._check_batch(y.shape[0])
        s = self.scale
        nb = self._buf("nb", y)
        z = torch.where(nb > 0, y * s * s / nb.clamp(min=1), torch.zeros_like(y))
        z = z.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3) * self._buf("mask", y)
        w = self._buf("w", y)
        return z * (w / (w @ w))[None, :, None, None]

    def Vt(self, x: Tensor) -> Tensor:
        c = torch.einsum("jk,bkhw->bjhw", self._buf("Q", x), x)
        b = _blocks(c, self.scale)
        return torch.cat([self._house(b[:, :1]), b[:, 1:]], 1).reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        g = c.reshape(c.shape[0], *self._grid_shape())
        g = torch.cat([self._house(g[:, :1]), g[:, 1:]], 1)
        img = _unblocks(g, self.scale)
        return torch.einsum("jk,bjhw->bkhw", self._buf("Q", img), img)

    def U(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self._grid_shape())[:, :1, :, :, 0]

    def Ut(self, y: Tensor) -> Tensor:
        g = torch.zeros(y.shape[0], *self._grid_shape(), dtype=y.dtype, device=y.device)
        g[:, 0, :, :, 0] = y[:, 0]
        return g.reshape(y.shape[0], -1)

    def singulars(self) -> Tensor:
        nb = self.nb  # (B', 1, h, w)
        g = torch.zeros(nb.shape[0], *self._grid_shape(), dtype=nb.dtype, device=nb.device)
        g[:, 0, :, :, 0] = self.w.norm() * nb[:, 0].sqrt() / self.scale**2
        return g.reshape(-1) if nb.shape[0] == 1 else g.reshape(nb.shape[0], -1)

    # -- restore mode ---------------------------------------------------------------------------------------
    def observe(self, image: Tensor) -> Tensor:
        """A grey or RGB photo ``(B, 1 or 3, H/s, W/s)`` -> ``y = grey * n_b / s^2``."""
        _, H, W = self.x_shape
        s = self.scale
        if image.dim() != 4 or image.shape[1] not in (1, 3) or tuple(image.shape[2:]) != (H // s, W // s):
            raise ValueError(
                f"old_photo: observed photo must be (B, 1 or 3, {H // s}, {W // s}), got {tuple(image.shape)}"
            )
        self._check_batch(image.shape[0])
        w = self._buf("w", image)
        grey = torch.einsum("k,bkhw->bhw", w, image)[:, None] if image.shape[1] == 3 else image * w.sum()
        return grey * self._buf("nb", image) / (s * s)

    def y_to_image(self, y: Tensor) -> Tensor:
        s = self.scale
        nb = self._buf("nb", y)
        return torch.where(nb > 0, y * s * s / nb.clamp(min=1), torch.zeros_like(y)) / self._buf("w", y).sum()
