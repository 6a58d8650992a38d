"""The seam figure of a tiled restoration: gradients across tile borders against interior ones.

For an image ``x`` (B, C, H, W), the gradient magnitude at column position ``q`` (between columns
``q - 1`` and ``q``) is ``G(q) = mean |x[..., q] - x[..., q - 1]|`` over images, channels and rows; rows
likewise. Operators with blocks (``s x s`` for s-fold SR) make block borders sharper by nature, so a
border at ``p`` is compared with the interior positions at the same phase ``p mod period``:

    ratio = mean_p G(p) / mean_p R(p mod period),   R(phi) = mean of G(q), q not a border, q = phi mod period

over the border positions of both axes. 1 means no seam; tiles without overlap give about 2.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def tile_borders(starts: Iterable[int], size: int, n: int, *, ends_only: bool = False) -> list[int]:
    """Positions in ``(0, n)`` where a tile ``[s, s + size)`` begins or ends (``ends_only``: ends)."""
    out = set()
    for s in starts:
        out.update([s + size] if ends_only else [s, s + size])
    return sorted(p for p in out if 0 < p < n)


def _axis(g: torch.Tensor, borders: list[int], period: int) -> tuple[list[float], list[float]]:
    """g: (n - 1,) gradient at positions 1..n-1 -> (border values, their same-phase references)."""
    n = g.shape[0] + 1
    border_set = set(borders)
    vals, refs = [], []
    for p in borders:
        same = [q for q in range(1, n) if q % period == p % period and q not in border_set]
        if not same:
            raise ValueError(f"no interior position with the phase of border {p} (period {period})")
        vals.append(float(g[p - 1]))
        refs.append(float(g[[q - 1 for q in same]].mean()))
    return vals, refs


def seam_ratio(x: torch.Tensor, rows: list[int], cols: list[int], *, period: int = 1) -> float:
    """Mean gradient across the border ``rows`` and ``cols`` over that at interior positions of the same
    phase (module docstring). x: (B, C, H, W); rows, cols: border positions in ``(0, H)``, ``(0, W)``."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if not rows and not cols:
        raise ValueError("rows and cols hold no border position")
    x = x.double()
    gh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((0, 1, 3))  # (H - 1,)
    gw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((0, 1, 2))  # (W - 1,)
    v1, r1 = _axis(gh, list(rows), period)
    v2, r2 = _axis(gw, list(cols), period)
    vals, refs = v1 + v2, r1 + r2
    return sum(vals) / sum(refs)
