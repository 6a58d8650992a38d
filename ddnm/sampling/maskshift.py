"""Mask-shift DDNM for large images (DDNM paper, sec. 4 / arXiv 2303.00354), on a wavefront.

The canvas (B, C, H, W) is restored window by window: ``window x window`` windows at ``stride``
(default ``window // 2``, as the paper). Window ``(i, j)`` runs a whole DDNM / DDNM+ sampling on its own
pixels with the global operator restricted to the window, and every pixel of it that an earlier window
has already finished is held fixed as a known pixel at every step. The window's operator is therefore

    A' x = (1 - m) A_w^+ A_w x + m x,     y' = (1 - m) A_w^+ y_w + m x_done,     A'^+ = I

(``m`` = 1 on finished pixels, ``A_w`` the restriction of ``A``): ``A'`` is the orthogonal projector on
the row space of the stacked constraints, so the range-null-space step (paper eq. 13),
``x0 = x0_t - A'^+ (A' x0_t - y')``, keeps ``x_done`` on ``m`` and applies DDNM's projection
elsewhere. This needs ``m`` to be a union of the operator's blocks, which it is when windows and
strides are multiples of the block size (``align``). DDNM+ uses ``A_w``'s singular values on the new
pixels and treats the finished ones as noiseless (singular value ``inf``).

Window ``(i, j)`` depends only on windows with smaller ``i + j`` that overlap it (the parts of its
anti-diagonal neighbours that overlap it were finished by ``(i - 1, j)``), so ``order="wavefront"``
restores one anti-diagonal per batch; ``order="raster"`` (one window at a time, as the reference demo)
gives the same result, only slower. Each window of image ``b`` draws its noise from a generator seeded
by (a number drawn once from image ``b``'s generator, ``i``, ``j``): results depend neither on the order
nor on the batch.

``margin`` (default 0, the paper): a window does not finish its pixels within ``margin`` of its right
and bottom edges (where the network saw no context and zero padding) unless they are the canvas's;
the next window restores them with context on both sides. Measured (4x SR, 128 px photos, 32 px
windows at stride 16, 20 steps, bench/RESULTS.md): seam ratio 1.69 / 1.38 with margin 0, 1.31 / 1.17
with margin 4, PSNR +0.5 dB. With ``margin > 0`` a raster window also sees the finished pixels of its
upper-right neighbour in its own trailing margin, so raster and wavefront differ slightly; with
``margin = 0`` they are equal.

Supported tasks: operators that act on disjoint pixel blocks, whose restriction to a block-aligned
window is the same operator at the window's size (per-image masks cropped): ``sr_avgpool`` (align =
scale), ``colorize``, ``inpaint``, ``denoise`` (align 1) and ``cs_block`` (align = block). Bicubic SR,
deblurring and Walsh CS mix pixels across any window edge and ``old_photo`` keeps per-block buffers:
they raise ValueError (use the tiled path, :mod:`ddnm.sampling.tiling`).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddnm.sampling.sampler import SampleOutput, ddnm_sample
from ddnm.sampling.tiling import tile_starts

ORDERS = ("wavefront", "raster")
Box = tuple[int, int, int, int]  # (top, left, height, width)


def supported_tasks() -> tuple[str, ...]:
    """The registered tasks mask-shift can run (``TaskInfo.block_local``)."""
    from ddnm.operators import TASKS

    return tuple(name for name, info in TASKS.items() if info.block_local is not None)


def block_size(op) -> int:
    """The pixel block ``op`` acts on (windows must align to it, ``TaskInfo.alignment``); ValueError
    for a task that is not block-local."""
    from ddnm.operators import TASKS

    name = getattr(op, "name", None)
    info = TASKS.get(name) if isinstance(name, str) else None
    align = None if info is None else info.alignment(op)
    if align is None:
        raise ValueError(f"mask-shift supports the tasks {supported_tasks()} (block-local operators); got "
                         f"{name!r}, which mixes pixels across window edges: use the tiled path")
    return align


def restrict(op, box: Box):
    """``op`` restricted to the window ``box``: the same operator at the window's size.

    Per-pixel buffers (``TaskInfo.pixel_buffers``: inpainting masks) are cropped; the other buffers
    (pooling bases, grey weights, CS matrices) do not depend on the size.
    """
    from ddnm.operators import TASKS

    block_size(op)
    top, left, h, w = box
    C, H, W = op.x_shape
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise ValueError(f"box={box} does not fit inside the canvas {H}x{W}")
    new = copy.copy(op)
    new._buffers = dict(op._buffers)
    for name in TASKS[op.name].pixel_buffers:
        new._buffers[name] = op._buffers[name][..., top : top + h, left : left + w]
    new.x_shape = (C, h, w)
    return new


def window_grid(H: int, W: int, window: int, stride: int, align: int) -> tuple[list[int], list[int]]:
    """Window starts along the height and width: first 0, last ``side - window``, multiples of align."""
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % align:
            raise ValueError(f"{name} must be a positive multiple of the operator's block {align}, got {v!r}")
    if stride > window:
        raise ValueError(f"stride={stride} must be <= window={window} (windows must overlap or touch)")
    if H < window or W < window:
        raise ValueError(f"mask-shift needs an image of at least one window: {H}x{W} < window={window}")
    return (tile_starts(H, window, window - stride, align), tile_starts(W, window, window - stride, align))


class _KnownRegion(torch.nn.Module):
    """The stacked window operator ``A'`` of the module docstring for a batch of windows.

    pieces: ``(op_w, m, count)``: ``count`` consecutive batch rows use window operator ``op_w`` with
    known-pixel mask ``m`` (1, 1, h, w). ``A`` returns an x-shaped tensor; ``A_pinv`` is the identity.
    """

    def __init__(self, pieces: Sequence[tuple[object, torch.Tensor, int]]) -> None:
        super().__init__()
        self.pieces = list(pieces)
        self.x_shape = tuple(pieces[0][0].x_shape)
        self.has_svd = all(getattr(op, "has_svd", False) for op, _, _ in pieces)
        self.name = "maskshift:" + str(getattr(pieces[0][0], "name", "op"))

    def _split(self, x: torch.Tensor):
        n = 0
        for op, m, count in self.pieces:
            yield op, m.to(x), x[n : n + count]
            n += count

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(1 - m) * op.A_pinv(op.A(xs)).to(x.dtype) + m * xs for op, m, xs in self._split(x)])

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([op.Vt(xs).to(x.dtype) for op, _, xs in self._split(x)])

    def V(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([op.V(cs).to(c.dtype) for op, _, cs in self._split(c)])

    def singulars(self) -> torch.Tensor:
        rows = []
        for op, m, count in self.pieces:
            s = op.singulars().double()
            s = s.expand(count, -1) if s.dim() == 1 or s.shape[0] == 1 else s
            ones = torch.ones(1, s.shape[-1], dtype=s.dtype, device=s.device)
            known = op.Vt(m.to(s) * op.V(ones).to(s)).to(s) > 0.5  # diag(V^T diag(m) V): 0/1 when aligned
            rows.append(torch.where(known, torch.inf, s))
        return torch.cat(rows)


@dataclass(frozen=True, kw_only=True)
class MaskShiftOutput:
    """Result of :func:`maskshift_sample`."""

    x: torch.Tensor
    """(B, C, H, W) restored canvas on the ``[-1, 1]`` scale, before any clamping."""
    model_calls: int
    """Model evaluations per image (window-sized images through the model): windows x steps."""
    depth: int
    """Model calls one after another (batches in sequence)."""
    windows: int
    """Windows per image."""
    starts: tuple[tuple[int, ...], tuple[int, ...]]
    """Window starts along the height and the width."""


def _window_generator(base: int, i: int, j: int, device) -> torch.Generator:
    digest = hashlib.sha256(f"{base}/{i}/{j}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def maskshift_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    op,
    alpha_bar: torch.Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    order: str = "wavefront",
    margin: int = 0,
    window_batch: int | None = None,
    generators: Sequence[torch.Generator],
    on_window: Callable[[int, int, Box, torch.Tensor, torch.Tensor], None] | None = None,
    solve: Callable[..., SampleOutput] | None = None,
    **sampler: object,
) -> MaskShiftOutput:
    """Restore the canvas ``op.x_shape`` window by window (module docstring).

    model: ``eps = model(x_t, t)``; window: side in pixels (default ``model.image_size``); stride:
    default ``window // 2``; order: "wavefront" (one anti-diagonal per batch) or "raster" (one window at
    a time); margin: trailing pixels a window leaves unfinished (module docstring), a multiple of the
    operator's block, at most ``window - stride``; window_batch: at most this many windows per batch
    (default: a whole anti-diagonal).
    y (B, ...) and op as for :func:`ddnm.sampling.ddnm_sample`; generators: one per image.
    solve: the solver, ``solve(model, y_w, op_w, alpha_bar, generators) -> SampleOutput``, run on each
    batch of windows (``ddnm.restoration.sample_batch`` passes the run's solver); None: DDNM /
    DDNM+ (:func:`ddnm.sampling.ddnm_sample`) with ``sampler``: steps, eta, sigma_y, travel.
    ``on_window(i, j, box, x, m)`` sees each finished window's x0 (B, C, h, w) and its known-pixel mask
    (1, 1, h, w).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if "callback" in sampler:
        raise ValueError("callback is not supported by mask-shift; use on_window")
    if solve is None:
        def solve(model, y, op, alpha_bar, generators):
            return ddnm_sample(model, y, op, alpha_bar, generators=generators, **sampler)
    elif sampler:
        raise ValueError(f"settings {sorted(sampler)} go to the solver, not to maskshift_sample")
    if len(generators) != y.shape[0]:
        raise ValueError(f"generators must hold one generator per image: got {len(generators)} "
                         f"for a batch of {y.shape[0]}")
    align = block_size(op)
    C, H, W = op.x_shape
    window = getattr(model, "image_size", None) if window is None else window
    stride = window // 2 if stride is None and isinstance(window, int) else stride
    hs, ws = window_grid(H, W, window, stride, align)
    gap = max([b - a for seq in (hs, ws) for a, b in zip(seq[:-1], seq[1:], strict=True)], default=window)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0 or margin % align \
            or margin > window - gap:
        raise ValueError(f"margin must be a multiple of the operator's block {align} in [0, window - "
                         f"stride = {window - gap}], got {margin!r}")
    if window_batch is not None and (isinstance(window_batch, bool) or not isinstance(window_batch, int)
                                     or window_batch < 1):
        raise ValueError(f"window_batch must be None or a positive int, got {window_batch!r}")

    B = y.shape[0]
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    y = y.to(dtype)
    device = y.device
    bases = [int(torch.randint(0, 2**62, (1,), generator=g, device=g.device)) for g in generators]
    pinv_y = op.A_pinv(y).to(dtype)
    canvas = torch.zeros(B, C, H, W, dtype=dtype, device=device)
    done = torch.zeros(1, 1, H, W, dtype=dtype, device=device)

    cells = [(i, j) for i in range(len(hs)) for j in range(len(ws))]
    if order == "raster":
        stages = [[c] for c in cells]
    else:
        stages = [[(i, j) for (i, j) in cells if i + j == d] for d in range(len(hs) + len(ws) - 1)]
    chunk = window_batch or max(len(s) for s in stages)

    depth = calls = 0
    for stage in stages:  # a stage's windows see the pixels finished by earlier stages only
        finished = []
        for k in range(0, len(stage), chunk):
            group = stage[k : k + chunk]
            boxes = [(hs[i], ws[j], window, window) for i, j in group]
            pieces, ys, gens, masks = [], [], [], []
            for (i, j), (top, left, h, w) in zip(group, boxes, strict=True):
                m = done[..., top : top + h, left : left + w].clone()
                known = canvas[..., top : top + h, left : left + w]
                pieces.append((restrict(op, (top, left, h, w)), m, B))
                ys.append((1 - m) * pinv_y[..., top : top + h, left : left + w] + m * known)
                gens += [_window_generator(bases[b], i, j, device) for b in range(B)]
                masks.append(m)
            out = solve(model, torch.cat(ys), _KnownRegion(pieces), alpha_bar, gens)
            depth += out.model_calls
            calls += out.model_calls * len(group)
            for n, ((i, j), box) in enumerate(zip(group, boxes, strict=True)):
                xw, m = out.x[n * B : (n + 1) * B], masks[n]
                keep = torch.zeros_like(m)  # what the window finishes: all but its trailing margin
                keep[..., : window - (margin if i + 1 < len(hs) else 0),
                     : window - (margin if j + 1 < len(ws) else 0)] = 1
                finished.append((box, xw, keep * (1 - m)))
                if on_window is not None:
                    on_window(i, j, box, xw, m)
        for (top, left, h, w), xw, new in finished:  # disjoint within a stage (module docstring)
            region = canvas[..., top : top + h, left : left + w]
            canvas[..., top : top + h, left : left + w] = torch.where(new > 0.5, xw, region)
            done[..., top : top + h, left : left + w] += new
    return MaskShiftOutput(x=canvas, model_calls=calls, depth=depth, windows=len(cells),
                           starts=(tuple(hs), tuple(ws)))
