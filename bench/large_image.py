"""Large-image 4x SR with the bundled small prior: tiled DDNM against mask-shift (wavefront, raster).

    OMP_NUM_THREADS=1 .venv/bin/python bench/large_image.py [--size 512] [--steps 10] [--tile 32]
        [--overlap 8] [--ms-stride 16] [--ms-margin 4] [--photo astronaut] [--methods tiled,wavefront,raster]

4x average-pool SR (noiseless DDNM, eta 0.85) of one photo from scikit-image (area-downscaled so its
short side is ``--size``, centre crop), float32 on the CPU, one image. Methods:

* ``whole``: the small prior on the whole canvas at once (it is fully convolutional; an ADM checkpoint
  is not): the reference for PSNR and seams;
* ``tiled``: :class:`ddnm.sampling.TiledEps`, ``--tile`` px tiles with ``--overlap``, all tiles of a
  step in batches of ``--tile-batch``, one global projection;
* ``no-overlap``: the same with overlap 0 (what seams look like);
* ``wavefront`` / ``raster``: :func:`ddnm.sampling.maskshift_sample`, ``--tile`` px windows at
  ``--ms-stride``, trailing ``--ms-margin``, one anti-diagonal per batch / one window at a time.

Columns: wall seconds; model calls (images of the model's input size through the model: tiles,
windows or whole canvases, times steps); depth (model calls one after another: batches in sequence);
PSNR against the ground truth (clamped to [0, 1]); seam ratio (:mod:`ddnm.seams`, period = scale) at
the tile borders (tiled, whole: the tiled grid's borders; mask-shift: where a window's new pixels meet
finished ones).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from PIL import Image

from ddnm import metrics
from ddnm.models import build as build_model
from ddnm.operators import build as build_op
from ddnm.sampling import TiledEps, ddnm_sample, image_generator, linear_schedule, maskshift_sample
from ddnm.seams import seam_ratio, tile_borders

ABAR = linear_schedule(1000)
METHODS = ("whole", "tiled", "no-overlap", "wavefront", "raster")


def load_photo(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) on [0, 1]: scikit-image's photo ``name``, area-downscaled to a short side of
    ``size`` (never upscaled), centre crop."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    arr = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
    img = Image.fromarray(arr.astype(np.uint8))
    f = size / min(img.size)
    if f > 1:
        raise ValueError(f"photo {name!r} {img.size} is smaller than size={size}")
    if f < 1:
        img = img.resize((max(size, round(img.size[0] * f)), max(size, round(img.size[1] * f))),
                         Image.Resampling.BOX)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    a = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def run(method: str, model, x01: torch.Tensor, *, scale: int = 4, steps: int = 10, tile: int = 32,
        overlap: int = 8, tile_batch: int = 32, ms_stride: int | None = None, ms_margin: int = 0,
        seed: int = 0) -> dict:
    """One restoration of the batch ``x01`` (B, 3, H, W) on [0, 1] -> a row of the table (and ``x``)."""
    B, _, H, W = x01.shape
    op = build_op("sr_avgpool", x_shape=(3, H, W), scale=scale)
    y = op.A(x01 * 2 - 1)
    gens = [image_generator(seed, str(b)) for b in range(B)]
    start = time.perf_counter()
    if method in ("whole", "tiled", "no-overlap"):
        eps = TiledEps(model, tile=tile, overlap=0 if method == "no-overlap" else overlap,
                       tile_batch=tile_batch)
        hs, ws = eps.grid(H, W)
        rows, cols = tile_borders(hs, tile, H), tile_borders(ws, tile, W)
        out = ddnm_sample(model if method == "whole" else eps, y, op, ABAR, steps=steps, generators=gens)
        x = out.x
        calls, depth = (out.model_calls, out.model_calls) if method == "whole" else (eps.stats.tiles // B,
                                                                                      eps.stats.calls)
    elif method in ("wavefront", "raster"):
        out = maskshift_sample(model, y, op, ABAR, window=tile, stride=ms_stride, order=method,
                               margin=ms_margin, steps=steps, generators=gens)
        x, calls, depth = out.x, out.model_calls, out.depth
        rows = tile_borders(out.starts[0], tile - ms_margin, H, ends_only=True)  # finished meets new
        cols = tile_borders(out.starts[1], tile - ms_margin, W, ends_only=True)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    seconds = time.perf_counter() - start
    restored = ((x.float().clamp(-1, 1) + 1) / 2)
    return {
        "method": method,
        "seconds": seconds,
        "model_calls": calls,
        "depth": depth,
        "psnr": float(metrics.psnr(restored, x01).mean()),
        "seam": seam_ratio(restored, rows, cols, period=scale),
        "consistency": float(metrics.consistency(op, x.float(), y).max()),
        "x": restored,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--tile-batch", type=int, default=32, help="tiles per model call (CPU: small is faster)")
    p.add_argument("--ms-stride", type=int, default=16, help="mask-shift window stride (paper: tile / 2)")
    p.add_argument("--ms-margin", type=int, default=4, help="mask-shift trailing margin (paper: 0)")
    p.add_argument("--photo", default="astronaut")
    p.add_argument("--methods", default="tiled,wavefront,raster")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model("small-prior")
    x01 = load_photo(args.photo, args.size)
    print(f"4x avgpool SR, {args.photo} {args.size}x{args.size}, small prior, {args.steps} steps, "
          f"tile/window {args.tile}, overlap {args.overlap}, mask-shift stride {args.ms_stride} "
          f"margin {args.ms_margin}, "
          f"torch threads {args.threads}")
    print("method | wall s | model calls | depth | PSNR dB | seam ratio | consistency")
    print("--- | --- | --- | --- | --- | --- | ---")
    rows = []
    for method in args.methods.split(","):
        r = run(method, model, x01, steps=args.steps, tile=args.tile, overlap=args.overlap,
                tile_batch=args.tile_batch, ms_stride=args.ms_stride, ms_margin=args.ms_margin)
        rows.append(r)
        print(f"{method} | {r['seconds']:.1f} | {r['model_calls']} | {r['depth']} | {r['psnr']:.2f} | "
              f"{r['seam']:.3f} | {r['consistency']:.1e}", flush=True)
    depth = {r["method"]: r["depth"] for r in rows}
    if "raster" in depth:
        for m in ("tiled", "wavefront"):
            if m in depth:
                print(f"depth raster / {m}: {depth['raster'] / depth[m]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
