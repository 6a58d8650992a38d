"""Denoising: ``A = I`` (all singular values 1); the noise level lives in the sampler's ``sigma_y``."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SVDOperator


class Identity(SVDOperator):
    """``y = x`` for ``(B, C, H, W)``; ``A_pinv = I``."""

    name = "denoise"

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return x.clone()

    def A_pinv(self, y: Tensor) -> Tensor:
        return y.clone()

    def Vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.x_shape)

    def U(self, c: Tensor) -> Tensor:
        return self.V(c)

    def Ut(self, y: Tensor) -> Tensor:
        return self.Vt(y)

    def singulars(self) -> Tensor:
        C, H, W = self.x_shape
        return torch.ones(C * H * W, dtype=self._ref.dtype, device=self._ref.device)

    def observe(self, image: Tensor) -> Tensor:
        """The noisy image is ``y`` itself."""
        self._check_x(image)
        return image
