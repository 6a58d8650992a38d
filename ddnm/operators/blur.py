"""Deblurring: separable blur kernels as explicit 1-D matrices (see separable.py for the SVD).

Kernels (tap ``size // 2`` at the centre, normalised to sum 1):

* ``deblur_uniform``: a box of ``size`` taps (9 in the paper),
* ``deblur_gauss``: a sampled Gaussian ``exp(-t^2 / 2 sigma^2)`` at ``t = -size//2 ..`` (the paper's
  setting is 5 taps with sigma 10),
* ``deblur_aniso``: a Gaussian of ``sigma_h`` along the height axis (1 in the paper) and one of
  ``sigma_w`` along the width axis (20), ``size`` taps each (9) -- the public code's ``Deblurring2D``
  applies its first kernel to rows-of-the-matrix (the H axis) and its second to the W axis.

Borders: ``padding="reflect"`` (half-sample symmetric, default) or ``"zero"``.

``quirks="reference"`` builds the public DDNM / DDRM blur matrices, for paper-comparable numbers:

1. the last kernel tap is dropped (their loop is ``range(i - k//2, i + k//2)``), so rows sum to less
   than 1 (8/9 for the uniform kernel) and the kernel is no longer symmetric;
2. zero padding at the borders (whatever ``padding`` says);
3. 1-D singular values below 3e-2 (absolute) are set to 0 (unless ``cutoff`` is given).

It is never on by default. It reproduces those matrices, not the reference code's effective operator:
that code repeats the singular values channel-major while its ``Vt`` interleaves the channels, so the
``A`` it applies is not the blur it names. Ours applies the blur of these matrices exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .common import REFERENCE_CUTOFF
from .common import quirks as _quirks
from .separable import SeparableSVD, conv_matrix


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """``exp(-t^2 / (2 sigma^2))`` at ``t = i - size // 2``, normalised to sum 1 (float64)."""
    t = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def uniform_kernel(size: int) -> torch.Tensor:
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def separable_blur(
    x_shape: Sequence[int],
    kernel_h: torch.Tensor,
    kernel_w: torch.Tensor,
    *,
    name: str,
    padding: str = "reflect",
    cutoff: float | None = None,
    quirks: str | None = None,
) -> SeparableSVD:
    """Blur the H axis with ``kernel_h`` and the W axis with ``kernel_w``; ``y`` has ``x``'s shape."""
    _, H, W = x_shape
    ref = _quirks(quirks)
    pad = "zero" if ref else padding
    return SeparableSVD(
        x_shape,
        conv_matrix(H, kernel_h, pad, drop_last_tap=ref),
        conv_matrix(W, kernel_w, pad, drop_last_tap=ref),
        cutoff=1e-4 if cutoff is None else cutoff,
        reference_cutoff=REFERENCE_CUTOFF if ref and cutoff is None else None,
        name=name,
    )


def deblur_uniform(x_shape, size=9, padding="reflect", cutoff=None, quirks=None) -> SeparableSVD:
    k = uniform_kernel(size)
    return separable_blur(x_shape, k, k, name="deblur_uniform", padding=padding, cutoff=cutoff, quirks=quirks)


def deblur_gauss(x_shape, size=5, sigma=10.0, padding="reflect", cutoff=None, quirks=None) -> SeparableSVD:
    k = gaussian_kernel(size, sigma)
    return separable_blur(x_shape, k, k, name="deblur_gauss", padding=padding, cutoff=cutoff, quirks=quirks)


def deblur_aniso(
    x_shape, size=9, sigma_h=1.0, sigma_w=20.0, padding="reflect", cutoff=None, quirks=None
) -> SeparableSVD:
    return separable_blur(
        x_shape,
        gaussian_kernel(size, sigma_h),
        gaussian_kernel(size, sigma_w),
        name="deblur_aniso",
        padding=padding,
        cutoff=cutoff,
        quirks=quirks,
    )
