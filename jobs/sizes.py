"""Image sizes at listing time and the cost of restoring an image, for size-aware shards.

A shard is cut by cost, ``pixels x model calls`` (a side shorter than the tile counts as a tile: it is
padded to one), not by image count, so a 40 MP scan does not share a shard with 31 thumbnails. Sizes
are read from the headers only (Pillow's ``Image.open(...).size`` reads no pixels), in a thread pool.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster import storage

HEADER_BLOCK = 1 << 16
"""Bytes per read while parsing a header (s3fs would otherwise fetch a 50 MB block)."""
THREADS = 32


def image_size(url: str, opts: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be read as an image."""
    from PIL import Image

    try:
        fs, path = storage.filesystem(url, opts)
        with fs.open(path, "rb", block_size=HEADER_BLOCK) as f, Image.open(f) as img:
            return tuple(int(v) for v in img.size)  # type: ignore[return-value]
    except Exception:  # unreadable or not an image: the worker gives it a failed row with the reason
        return None


def image_sizes(root: str, keys: list[str], opts: dict[str, Any]) -> dict[str, tuple[int, int] | None]:
    """key -> (width, height) or None, read in a thread pool."""
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=min(THREADS, len(keys))) as pool:
        sizes = pool.map(lambda k: image_size(storage.join(root, k), opts), keys)
        return dict(zip(keys, sizes, strict=True))


def image_costs(sizes: dict[str, tuple[int, int] | None], *, tile: int | None,
                model_calls: int) -> dict[str, int]:
    """key -> ``max(w, tile) * max(h, tile) * model_calls``; an unknown size costs the median. tile:
    the model's tile / native side; None when only its checkpoint knows it (the image's own pixels)."""
    tile = int(tile or 1)
    costs = {k: max(s[0], tile) * max(s[1], tile) * model_calls for k, s in sizes.items() if s}
    median = int(statistics.median(costs.values())) if costs else tile * tile * model_calls
    return {k: costs.get(k, median) for k in sizes}


def shard_budget(costs: dict[str, int], shard_size: int) -> int:
    """The cost one shard may hold: ``shard_size`` images of the median cost (so a folder of equal
    sizes is cut by count, as before)."""
    return shard_size * (int(statistics.median(costs.values())) if costs else 1)
