"""Output images of the worker: where they go, panels and std maps.

Everything here is CPU work on small tensors, done off the sampling thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from cluster import storage
from cluster.storage import join


def output_name(key: str) -> str:
    """The PNG name of one key's outputs: the key itself when it ends in ``.png``, else the key with
    ``.png`` appended (``"a/p.png" -> "a/p.png"``, ``"a/p.jpg" -> "a/p.jpg.png"``).

    It depends on the key alone, so shards planned and run apart, and keys added later by
    --incremental, never need to know each other; and `a/p.jpg` and `a/p.png` get their own files.
    The one pair that still meets (``p.jpg`` and ``p.jpg.png``) is refused when planning."""
    return key if key.endswith(".png") else key + ".png"


def output_urls(output_url: str, key: str) -> dict[str, str]:
    """Where one image's outputs go: images/, panels/ and std/ under the output URL, as PNG."""
    name = output_name(key)
    return {part: join(output_url, part, name) for part in ("images", "panels", "std")}


def remove_outputs(output_url: str, keys: Iterable[str], options: dict | None = None) -> None:
    """Delete whatever outputs of `keys` exist: those of shards that were not committed, whose rows
    were never written, so that no image file is left without its row. Best effort: where the
    storage refuses (read-only), they stay until a rerun writes them again."""
    for key in keys:
        for url in output_urls(output_url, key).values():
            with contextlib.suppress(OSError):
                storage.remove(url, options)


def _tile(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(C, h', w') in [0, 1] -> (3, h, w): grey repeated, resized with nearest neighbours."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != 3:
        x = x.mean(0, keepdim=True).expand(3, -1, -1)
    if tuple(x.shape[1:]) != (h, w):
        x = F.interpolate(x[None], size=(h, w), mode="nearest")[0]
    return x


def panel(tiles: list[torch.Tensor], height: int, width: int, gap: int = 2) -> torch.Tensor:
    """Side-by-side panel (3, H, n*W + gaps) of images in [0, 1], separated by white gaps."""
    parts = []
    for i, t in enumerate(tiles):
        if i:
            parts.append(torch.ones(3, height, gap))
        parts.append(_tile(t, height, width))
    return torch.cat(parts, dim=2)


def std_map(std: torch.Tensor) -> torch.Tensor:
    """Per-pixel std of the K samples (C, H, W) on [0, 1] -> a grey map (1, H, W) scaled to its max."""
    m = std.detach().float().cpu().mean(0, keepdim=True)
    return m / m.max().clamp_min(1e-8)
