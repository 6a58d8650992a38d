"""Tiled DDNM for images of any size: one blended eps over the whole canvas, one global projection.

At every step the canvas ``x_t`` (B, C, H, W) is covered by overlapping ``tile x tile`` windows (the
model's native size by default); all tiles of all images are evaluated as batches of at most
``tile_batch`` tiles, and their eps are blended with smooth window weights into one full-canvas eps:

    eps(p) = sum_k w_k(p) eps_k(p) / sum_k w_k(p)

``w_k`` is a product of 1-D raised-cosine ramps, ``sin^2(pi/2 (i + 1/2) / L)`` over the ``L`` pixels a
tile shares with its neighbour on that side, and 1 elsewhere (also on the canvas border), so every
pixel has positive total weight and a pixel covered by one tile takes that tile's eps unchanged. This
is MultiDiffusion's averaging with feathered weights. :class:`TiledEps` is a model wrapper with the
model's call signature, so the unchanged DDNM sampler (:func:`ddnm.sampling.ddnm_sample`) runs on the
full canvas: ``A``, ``A_pinv`` and DDNM+'s SVD view act on the whole image and data consistency
(paper eq. 13) is exact everywhere, not per tile. Time travel, DDNM+ and K samples need nothing more.

Sizes are never resized: a canvas side shorter than the tile is reflect-padded up to the tile and the
eps cropped back (an ADM checkpoint must see its native size); tiles themselves must be a multiple of
the network's downsampling stride, so any canvas side (odd ones included) works. Tiles of one image
are independent samples of the batch, and noise is drawn by the sampler on the full canvas from the
per-image generators, so a result depends neither on ``tile_batch`` nor on the other images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddnm.sampling.sampler import SampleOutput, ddnm_sample

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_stride(model) -> int:
    """Downsampling factor of the model's network: ``2 ** (levels - 1)`` from its config, else 1.

    Reads ``channel_mult`` (ADM), ``ch_mult`` (DDPM) or ``block_out_channels`` (diffusers) of
    ``model.net.config``; a model may also state it as ``model.stride``.
    """
    if isinstance(getattr(model, "stride", None), int):
        return int(model.stride)
    return config_stride(getattr(getattr(model, "net", None), "config", None))


def config_stride(config) -> int:
    """``2 ** (levels - 1)`` of a network config (ADM ``channel_mult``, DDPM ``ch_mult``, diffusers
    ``block_out_channels``); 1 for None or a config without levels."""
    for name in ("channel_mult", "ch_mult", "block_out_channels"):
        levels = getattr(config, name, None)
        if levels is not None:
            return 2 ** (len(levels) - 1)
    return 1


def tile_starts(n: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, n)`` with at least ``overlap`` shared pixels.

    ``n <= tile`` gives ``[0]`` (the caller pads). Otherwise ``k = ceil((n - tile) / (tile - overlap)) + 1``
    tiles, the first at 0, the last at ``n - tile``, the rest evenly spaced and rounded down to a
    multiple of ``align`` (``n - tile`` must then be a multiple of ``align``).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap!r}")
    if n <= tile:
        return [0]
    last = n - tile
    if last % align:
        raise ValueError(f"n - tile = {n} - {tile} must be a multiple of align={align}")
    k = math.ceil(last / (tile - overlap)) + 1
    starts = [(round(i * last / (k - 1)) // align) * align for i in range(k - 1)] + [last]
    return sorted(set(starts))


def _ramp(length: int, dtype: torch.dtype) -> torch.Tensor:
    """(length,) raised cosine ``sin^2(pi/2 (i + 1/2) / length)``, rising from ~0 to ~1, all > 0."""
    i = torch.arange(length, dtype=torch.float64)
    return torch.sin(0.5 * math.pi * (i + 0.5) / length).pow(2).to(dtype)


def axis_weights(starts: Sequence[int], tile: int, n: int, dtype=torch.float64) -> list[torch.Tensor]:
    """Per tile a (tile,) weight: ramps over the pixels shared with the previous / next tile, else 1.

    ``n`` is the (padded) canvas side; tiles are ``[s, s + tile)``. A ramp is at most ``tile // 2``
    long so that the rising and falling ramps of one tile never overlap.
    """
    out = []
    for k, s in enumerate(starts):
        w = torch.ones(tile, dtype=dtype)
        if k > 0:
            up = min(starts[k - 1] + tile - s, tile // 2)
            if up > 0:
                w[:up] *= _ramp(up, dtype)
        if k + 1 < len(starts):
            down = min(s + tile - starts[k + 1], tile // 2)
            if down > 0:
                w[tile - down:] *= _ramp(down, dtype).flip(0)
        out.append(w)
    assert all(s + tile <= max(n, tile) for s in starts)
    return out


def reflect_pad(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom / right up to (h, w) by repeated reflection (any amount)."""
    while x.shape[-2] < h or x.shape[-1] < w:
        ph = min(h - x.shape[-2], x.shape[-2] - 1) if x.shape[-2] < h else 0
        pw = min(w - x.shape[-1], x.shape[-1] - 1) if x.shape[-1] < w else 0
        if ph == 0 and pw == 0:  # a side of 1 pixel cannot reflect: replicate it
            x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")
            break
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


@dataclass(frozen=True, kw_only=True)
class TileStats:
    """What a :class:`TiledEps` has evaluated so far (reset with :meth:`TiledEps.reset`)."""

    calls: int
    """Calls of the wrapped model (batches evaluated one after another: the sequential depth)."""
    tiles: int
    """Tile evaluations, each a ``tile x tile`` image through the model."""


class TiledEps:
    """``eps = TiledEps(model, ...)(x_t, t)`` on a canvas of any size, blended from overlapping tiles.

    Args:
        model: ``eps = model(x_t, t)`` with ``image_size`` (native side) and ``in_channels``.
        tile: tile side in pixels (default ``model.image_size``); a multiple of :func:`model_stride`.
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile`` (default ``tile // 4``).
        tile_batch: at most this many tiles per model call (a memory cap; default 64). The result
            does not depend on it.
        align: tile starts are multiples of ``align`` (default 1).

    ``__call__(x_t (B, C, H, W), t (B,) int64) -> eps (B, C, H, W)`` in ``x_t``'s dtype; extra output
    channels (learned sigma) are dropped. A canvas of exactly one tile calls the model once on it and
    returns its eps unchanged (bit for bit the untiled path).
    """

    def __init__(self, model: Model, *, tile: int | None = None, overlap: int | None = None,
                 tile_batch: int = 64, align: int = 1) -> None:
        tile = getattr(model, "image_size", None) if tile is None else tile
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"tile must be a positive int (default: the model's image_size), got {tile!r}")
        stride = model_stride(model)
        if tile % stride:
            raise ValueError(f"tile={tile} must be a multiple of the model's downsampling stride {stride}")
        overlap = tile // 4 if overlap is None else overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
            raise ValueError(f"overlap must be an int in [0, tile={tile}), got {overlap!r}")
        if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
            raise ValueError(f"tile_batch must be a positive int, got {tile_batch!r}")
        if isinstance(align, bool) or not isinstance(align, int) or align < 1:
            raise ValueError(f"align must be a positive int, got {align!r}")
        self.model, self.tile, self.overlap = model, tile, overlap
        self.tile_batch, self.align = tile_batch, align
        self.image_size = getattr(model, "image_size", tile)
        self.in_channels = getattr(model, "in_channels", None)
        self.reset()

    def reset(self) -> None:
        self._calls = 0
        self._tiles = 0

    @property
    def stats(self) -> TileStats:
        return TileStats(calls=self._calls, tiles=self._tiles)

    def grid(self, H: int, W: int) -> tuple[list[int], list[int]]:
        """Tile starts along the height and the width of an (H, W) canvas (after padding)."""
        h, w = max(H, self.tile), max(W, self.tile)
        return (tile_starts(h, self.tile, self.overlap, self._align(h)),
                tile_starts(w, self.tile, self.overlap, self._align(w)))

    def _align(self, n: int) -> int:
        return self.align if (n - self.tile) % self.align == 0 else 1

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the caller's grad mode holds: a gradient solver differentiates through the tiles
        B, C, H, W = x_t.shape
        T = self.tile
        x = reflect_pad(x_t, max(H, T), max(W, T))
        hs, ws = self.grid(H, W)
        wh = axis_weights(hs, T, x.shape[-2], x.dtype)
        ww = axis_weights(ws, T, x.shape[-1], x.dtype)
        t = torch.as_tensor(t, device=x.device).expand(B)
        boxes = [(i, j) for i in range(len(hs)) for j in range(len(ws))]
        items = [(b, i, j) for (i, j) in boxes for b in range(B)]  # tile-major, image-minor
        acc = torch.zeros_like(x)
        norm = torch.zeros(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        for n in range(0, len(items), self.tile_batch):
            chunk = items[n : n + self.tile_batch]
            xs = torch.stack([x[b, :, hs[i] : hs[i] + T, ws[j] : ws[j] + T] for b, i, j in chunk])
            eps = self.model(xs, t[[b for b, _, _ in chunk]])[:, :C].to(x.dtype)
            self._calls += 1
            self._tiles += len(chunk)
            for e, (b, i, j) in zip(eps, chunk, strict=True):
                wgt = wh[i].to(x.device)[:, None] * ww[j].to(x.device)[None, :]
                acc[b, :, hs[i] : hs[i] + T, ws[j] : ws[j] + T] += wgt * e
                if b == 0:
                    norm[0, 0, hs[i] : hs[i] + T, ws[j] : ws[j] + T] += wgt
        return (acc / norm)[..., :H, :W]


def tiled_eps_for(model: Model, x_shape: Sequence[int], *, tile: int | None = None,
                  overlap: int | None = None, tile_batch: int = 64) -> Model:
    """The eps model for canvases of ``x_shape`` (C, H, W): ``model`` itself at its native size
    (``H == W == model.image_size`` and no other tile asked for), else a :class:`TiledEps`."""
    native = getattr(model, "image_size", None)
    if tile in (None, native) and tuple(x_shape[-2:]) == (native, native):
        return model
    return TiledEps(model, tile=tile, overlap=overlap, tile_batch=tile_batch)


def tiled_sample(
    model: Model,
    y: torch.Tensor,
    op,
    alpha_bar: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    tile_batch: int = 64,
    **sampler: object,
) -> SampleOutput:
    """:func:`ddnm.sampling.ddnm_sample` on a canvas of any size through :class:`TiledEps`.

    y, op, alpha_bar and ``sampler`` (steps, eta, sigma_y, travel, generators, callback) as for
    ``ddnm_sample``; the canvas is ``op.x_shape``. ``model_calls`` counts steps per image, as there;
    the tile evaluations are ``TiledEps.stats``.
    """
    eps = TiledEps(model, tile=tile, overlap=overlap, tile_batch=tile_batch)
    return ddnm_sample(eps, y, op, alpha_bar, **sampler)
