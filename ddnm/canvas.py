"""How a canvas of any size meets the model: whole, tiled (one global projection) or mask-shift."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ddnm.sampling import TiledEps, model_stride

CANVASES = ("auto", "whole", "tiled", "maskshift")
WHOLE_MAX_PIXELS = 512 * 512
"""``canvas="auto"`` samples a fully convolutional model (``model.any_size``) on the whole canvas up to
this many pixels; above it, and for any model at a size other than its native one, on tiles."""


@dataclass(frozen=True, kw_only=True)
class Canvas:
    """How a canvas (the clean image, any size) meets the model: whole, tiled or mask-shift.

    ``kind``: "whole" (the model sees the whole canvas), "tiled" (:class:`ddnm.sampling.TiledEps`: one
    blended eps from overlapping tiles, one global projection), "maskshift" (window by window on a
    wavefront, :func:`ddnm.sampling.maskshift_sample`; block-local tasks only) or "auto": whole at the
    model's native size, and for a fully convolutional model (``model.any_size``) up to
    :data:`WHOLE_MAX_PIXELS`; tiled otherwise.
    """

    kind: str = "auto"
    """One of :data:`CANVASES`."""
    tile: int | None = None
    """Tile / window side in pixels; None: the model's native size (``model.image_size``)."""
    overlap: int | None = None
    """Pixels shared by neighbouring tiles / windows; None: ``tile // 4`` (tiled), ``tile // 2``
    (mask-shift)."""
    tile_batch: int = 64
    """At most this many tiles per model call (a memory cap; results do not depend on it)."""

    def __post_init__(self) -> None:
        if self.kind not in CANVASES:
            raise ValueError(f"canvas must be one of {CANVASES}, got {self.kind!r}")
        for name in ("tile", "overlap"):
            v = getattr(self, name)
            low = 1 if name == "tile" else 0
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{name} must be None or an int >= {low}, got {v!r}")
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise ValueError(f"overlap must be < tile={self.tile}, got {self.overlap!r}")
        if isinstance(self.tile_batch, bool) or not isinstance(self.tile_batch, int) or self.tile_batch < 1:
            raise ValueError(f"tile_batch must be a positive int, got {self.tile_batch!r}")

    def side(self, model) -> int:
        """The tile side for ``model``: ``tile``, else the model's native size; ValueError when neither
        is known (a model that states no native size needs an explicit tile)."""
        side = self.tile or getattr(model, "image_size", None)
        if not side:
            raise ValueError(f"model {type(model).__name__} states no native size (image_size): give the "
                             "canvas a tile side (--tile)")
        return int(side)

    def resolve(self, model, x_shape: Sequence[int]) -> str:
        """"whole", "tiled" or "maskshift" for a canvas of ``x_shape`` ``(C, H, W)``."""
        if self.kind != "auto":
            return self.kind
        H, W = (int(v) for v in x_shape[-2:])
        native = getattr(model, "image_size", None)
        if self.tile is None and (H, W) == (native, native):
            return "whole"
        stride = model_stride(model)
        if getattr(model, "any_size", False) and self.tile is None and H * W <= WHOLE_MAX_PIXELS \
                and H % stride == 0 and W % stride == 0:
            return "whole"
        return "tiled"

    def tiles(self, model, x_shape: Sequence[int]) -> int:
        """Model inputs per sampler step for one canvas: 1 whole, else its tiles (mask-shift: windows)."""
        kind = self.resolve(model, x_shape)
        if kind == "whole":
            return 1
        H, W = (int(v) for v in x_shape[-2:])
        T = self.side(model)
        if kind == "tiled":
            hs, ws = self.tiled_eps(model).grid(H, W)
            return len(hs) * len(ws)
        stride = T - (T // 2 if self.overlap is None else self.overlap)
        return ((max(H - T, 0) + stride - 1) // stride + 1) * ((max(W - T, 0) + stride - 1) // stride + 1)

    def tiled_eps(self, model) -> TiledEps:
        return TiledEps(model, tile=self.side(model), overlap=self.overlap, tile_batch=self.tile_batch)


WHOLE = Canvas(kind="whole")
