"""Time to the first restored image, and to the end, of a small job run as a user runs it.

`ddnm-batch run` in a subprocess (a private local Ray, the bundled small prior, 100 steps) on N smooth
random 64x64 photos, 4x bicubic SR in evaluate mode; the script watches OUTPUT/images for the first
file. Prints seconds to the first image, to the end, and the first image's share of the whole run.
Issue 13's target: the first image within 10 s on an idle 2-core machine.

    OMP_NUM_THREADS=1 .venv/bin/python bench/first_image.py [--images 10] [--steps 100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.BICUBIC).save(folder / f"p{i:02d}.png")


def one_run(inp: Path, out: Path, steps: int, extra: list[str]) -> tuple[float, float]:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--input", str(inp), "--output", str(out), "--task",
           "sr_bicubic", "--set", "scale=4", "--mode", "evaluate", "--steps", str(steps), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and (out / "images").is_dir() and any((out / "images").iterdir()):
            first = time.monotonic() - t0
        time.sleep(0.05)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return (first if first is not None else total), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="--workers for the run (default: the tool's)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="first-image-"))
    make_inputs(tmp / "in", a.images)
    extra = ["--workers", str(a.workers)] if a.workers else []
    print(f"{a.images} images 64x64, small prior, {a.steps} steps, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f} at start")
    for r in range(a.repeat):
        first, total = one_run(tmp / "in", tmp / f"out{r}", a.steps, extra)
        print(f"run {r}: first image {first:.1f} s, all {a.images} in {total:.1f} s "
              f"(first / total = {first / total:.2f})")
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
