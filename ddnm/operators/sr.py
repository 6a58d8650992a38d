"""Super-resolution operators: ``s x s`` average pooling and separable bicubic downsampling.

Average pooling: each ``s x s`` block maps to its mean, ``y_b = (1/s^2) 1^T x_b = (1/s) (1/s 1)^T x_b``;
``1/s 1`` is a unit vector, so the block's only singular value is ``1/s`` with right singular vector
``1/s 1`` (DDRM appendix). ``V`` per block is a fixed orthonormal ``s^2 x s^2`` basis whose first row is
``1/s 1``; ``A_pinv`` replicates each value over its block.

Bicubic: the separable Keys kernel (``a = -0.5``) stretched by the scale ``s`` (``4s`` taps, stride
``s``, normalised to sum 1), i.e. the antialiased bicubic of Pillow / ``interpolate(antialias=True)``,
with "reflect" (half-sample symmetric: ``x[-1] = x[0]``) or zero padding at the borders. Its SVD is that
of the two 1-D matrices (:class:`ddnm.operators.separable.SeparableSVD`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SVDOperator
from .blocks import BlockBasisOperator
from .common import REFERENCE_CUTOFF, basis_with_first_row, check_observed
from .common import quirks as quirks_on


class AvgPoolSR(BlockBasisOperator):
    """``s x s`` block mean: ``(B, C, H, W)`` -> ``(B, C, H/s, W/s)``; ``s`` must divide ``H`` and ``W``.

    The block-basis operator with one kept coefficient (basis row ``1/s 1``, singular value ``1/s``);
    ``A`` and ``A_pinv`` use the direct formulas (pooling, replication), equal to the basis form.
    """

    name = "sr_avgpool"

    def __init__(self, x_shape: Sequence[int], scale: int = 4) -> None:
        _, H, W = (int(v) for v in x_shape)
        if int(scale) != scale or scale < 1 or H % scale or W % scale:
            raise ValueError(f"scale must be a positive integer dividing H={H} and W={W}, got {scale}")
        s = int(scale)
        first = torch.full((s * s,), 1.0 / s, dtype=torch.float64)
        super().__init__(x_shape, block=s, basis=basis_with_first_row(first), kept=1, sigma=1.0 / s,
                         image_y=True)
        self.scale = s

    def A(self, x: Tensor) -> Tensor:
        self._check_x(x)
        return F.avg_pool2d(x, self.scale) if self.scale > 1 else x.clone()

    def A_pinv(self, y: Tensor) -> Tensor:
        s = self.scale
        return y.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)

    def observe(self, image: Tensor) -> Tensor:
        """The low-resolution image ``(B, C, H/s, W/s)`` is ``y`` itself."""
        C, H, W = self.x_shape
        return check_observed(self.name, image, (C, H // self.scale, W // self.scale))


def keys_cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel (``a = -0.5``: Pillow's and antialiased torch bicubic)."""
    x = x.abs()
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_matrix(n: int, scale: int, padding: str = "reflect", reference: bool = False) -> Tensor:
    """``(n // scale, n)`` float64 matrix of antialiased bicubic downsampling by ``scale``.

    Output sample ``m`` sits at the centre of its ``scale`` input pixels, ``(m + 1/2) s`` in pixel-edge
    coordinates; input pixel ``j`` gets weight ``k((j + 1/2 - (m + 1/2) s) / s)`` over ``4 s`` taps,
    normalised to sum 1. ``reference=True`` reproduces the public code's ``SRConv`` placement
    (``k((t - 2s + 1/2) / s)`` around ``i = s//2 + m s``), which is the same for even scales and half a
    pixel off for odd ones.
    """
    from .separable import scatter_matrix

    s = int(scale)
    m = torch.arange(n // s, dtype=torch.float64)[:, None]
    t = torch.arange(4 * s, dtype=torch.float64)[None, :]
    if reference:
        j = (s // 2 + m * s) - 2 * s + t
        x = ((t - 2 * s + 0.5) / s).expand_as(j)
    else:
        j = m * s + s // 2 - 2 * s + t
        x = (j + 0.5 - (m + 0.5) * s) / s
    w = keys_cubic(x)
    w = w / w.sum(dim=1, keepdim=True)
    return scatter_matrix(n // s, n, j.to(torch.long), w, padding)


def bicubic_sr(
    x_shape: Sequence[int],
    scale: int = 4,
    padding: str = "reflect",
    cutoff: float | None = None,
    quirks: str | None = None,
) -> SVDOperator:
    """Bicubic downsampling by ``scale`` (must divide H and W): ``(B, C, H, W)`` -> ``(B, C, H/s, W/s)``.

    ``cutoff``: relative cut-off on the singular values (default 1e-4, see separable.py).
    ``quirks="reference"``: the public DDNM code's ``SRConv``: its tap placement (differs for odd
    scales only) and its absolute 3e-2 cut-off on the 1-D singular values (unless ``cutoff`` is given).
    """
    from .separable import SeparableSVD

    _, H, W = x_shape
    ref = quirks_on(quirks)
    op = SeparableSVD(
        x_shape,
        bicubic_matrix(H, scale, padding, reference=ref),
        bicubic_matrix(W, scale, padding, reference=ref),
        cutoff=1e-4 if cutoff is None else cutoff,
        reference_cutoff=REFERENCE_CUTOFF if ref and cutoff is None else None,
        name="sr_bicubic",
    )
    op.scale = int(scale)
    return op

