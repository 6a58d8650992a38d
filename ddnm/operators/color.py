"""Colorization: per pixel ``y = w . (R, G, B)`` (a grey image ``(B, 1, H, W)``).

SVD per pixel: ``w = ||w|| e`` with ``e = w / ||w||``; ``V^T`` is a fixed orthonormal 3x3 basis ``Q``
whose first row is ``e`` (a Householder reflection), the singular value is ``||w||`` on that first
coefficient and 0 on the two colour coefficients. ``A_pinv y = w y / ||w||^2`` (grey replicated to RGB
when the weights are equal).

Weights: ``"equal"`` (1/3, 1/3, 1/3, the default), ``"reference"`` (0.3333, 0.3334, 0.3333, the public
DDNM code's values), ``"luma"`` (ITU-R BT.601: 0.299, 0.587, 0.114), or any three non-negative numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SVDOperator
from .common import basis_with_first_row

WEIGHTS = {
    "equal": (1 / 3, 1 / 3, 1 / 3),
    "reference": (0.3333, 0.3334, 0.3333),
    "luma": (0.299, 0.587, 0.114),
}


def grey_weights(weights: str | Sequence[float]) -> Tensor:
    """Resolve the ``weights`` setting -> float64 ``(3,)``; ValueError naming a bad value."""
    if isinstance(weights, str) and "," in weights:  # command-line form "0.2,0.3,0.5"
        try:
            weights = [float(v) for v in weights.split(",")]
        except ValueError as e:
            raise ValueError(f"weights must be {sorted(WEIGHTS)} or three numbers, got {weights!r}") from e
    if isinstance(weights, str):
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {sorted(WEIGHTS)} or three numbers, got {weights!r}")
        return torch.tensor(WEIGHTS[weights], dtype=torch.float64)
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
    if w.shape != (3,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be three non-negative numbers with a positive sum, got {weights!r}")
    return w


class Colorize(SVDOperator):
    """``y = sum_k w_k x_k`` per pixel: ``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""

    name = "colorize"

    def __init__(self, x_shape: Sequence[int], weights: str | Sequence[float] = "equal") -> None:
        super().__init__(x_shape)
        if self.x_shape[0] != 3:
            raise ValueError(f"colorize needs 3 channels, got x_shape={self.x_shape}")
        w = grey_weights(weights)
        self.register_buffer("w", w)
        self.register_buffer("Q", basis_with_first_row(w / w.norm()))

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return torch.einsum("k,bkhw->bhw", self._buf("w", x), x)[:, None]

    def A_pinv(self, y: Tensor) -> Tensor:
        w = self._buf("w", y)
        return y * (w / (w @ w))[None, :, None, None]

    def Vt(self, x: Tensor) -> Tensor:
        return torch.einsum("jk,bkhw->bjhw", self._buf("Q", x), x).reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        c = c.reshape(c.shape[0], *self.x_shape)
        return torch.einsum("jk,bjhw->bkhw", self._buf("Q", c), c)

    def U(self, c: Tensor) -> Tensor:
        H, W = self.x_shape[1:]
        return c[:, : H * W].reshape(c.shape[0], 1, H, W)

    def Ut(self, y: Tensor) -> Tensor:
        y = y.reshape(y.shape[0], -1)
        return torch.cat([y, torch.zeros(y.shape[0], 2 * y.shape[1], dtype=y.dtype, device=y.device)], 1)

    def singulars(self) -> Tensor:
        H, W = self.x_shape[1:]
        s = torch.zeros(3, H * W, dtype=self.w.dtype, device=self.w.device)
        s[0] = self.w.norm()
        return s.reshape(-1)

    def observe(self, image: Tensor) -> Tensor:
        """A grey photo ``(B, 1, H, W)`` (or the same stored as RGB) -> ``y``.

        An RGB file gives ``w . rgb``; a one-channel image ``g`` gives ``sum(w) g`` (the y of the colour
        image whose channels all equal ``g``).
        """
        if image.dim() != 4 or image.shape[1] not in (1, 3) or tuple(image.shape[2:]) != self.x_shape[1:]:
            raise ValueError(
                f"colorize: observed image must be (B, 1 or 3, {self.x_shape[1]}, {self.x_shape[2]}), "
                f"got {tuple(image.shape)}"
            )
        return self.A(image.expand(-1, 3, -1, -1))

    def y_to_image(self, y: Tensor) -> Tensor:
        return y / self._buf("w", y).sum()
