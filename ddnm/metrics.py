"""Per-image quality metrics: PSNR and SSIM on ``[0, 1]`` images, and data consistency ``||A x - y||``.

All functions take batches and return ``(B,)`` tensors (float64 for PSNR).
"""

from __future__ import annotations

import math
import warnings

import torch


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape or x.dim() != 4:
        raise ValueError(f"x and ref must both be (B, C, H, W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images on ``[0, 1]`` (peak 1): ``10 log10(1 / mse)`` per image, ``(B,)``.

    Identical images give ``inf``.
    """
    _check_pair(x, ref)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM per image on ``[0, 1]`` (Wang et al. 2004: Gaussian window 11, sigma 1.5, K = (0.01, 0.03)).

    Computed by ``pytorch_msssim.ssim(data_range=1, size_average=False)``. Images smaller than the
    11 x 11 window use the largest odd window that fits (noted by a warning); below 3 x 3 the SSIM is
    undefined and ``nan`` is returned, with a warning saying why.
    """
    _check_pair(x, ref)
    from pytorch_msssim import ssim as _ssim  # lazy: only the metrics need it

    side = min(x.shape[-2:])
    win = 11 if side >= 11 else (side if side % 2 else side - 1)
    if win < 3:
        warnings.warn(f"ssim: image {tuple(x.shape[-2:])} is smaller than a 3x3 window; returning nan",
                      stacklevel=2)
        return torch.full((x.shape[0],), math.nan, dtype=torch.float64)
    if win != 11:
        warnings.warn(f"ssim: image {tuple(x.shape[-2:])} is smaller than the 11x11 window; "
                      f"using {win}x{win}", stacklevel=2)
    return _ssim(x.float(), ref.float(), data_range=1.0, size_average=False, win_size=win).double()


def consistency(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||A x - y||_2`` per image, ``(B,)``; x on the ``[-1, 1]`` scale like ``y``."""
    r = op.A(x.to(y.dtype)) - y
    return r.flatten(1).double().norm(dim=1)
