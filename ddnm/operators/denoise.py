"""Denoising: ``A = I`` (all singular values 1); the noise level lives in the sampler's ``sigma_y``."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PixelBasisOperator


class Identity(PixelBasisOperator):
    """``y = x`` for ``(B, C, H, W)``; ``A_pinv = I``."""

    name = "denoise"

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return x.clone()

    def A_pinv(self, y: Tensor) -> Tensor:
        return y.clone()

    def singulars(self) -> Tensor:
        C, H, W = self.x_shape
        return torch.ones(C * H * W, dtype=self._ref.dtype, device=self._ref.device)

    def observe(self, image: Tensor) -> Tensor:
        """The noisy image is ``y`` itself."""
        self._check_x(image)
        return image
