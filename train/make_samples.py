"""Write the demo photos: ``python -m train.make_samples`` -> ``jobs/assets/samples/{chelsea,coffee}.png``.

The two photos held out of the small prior's training (scikit-image's ``chelsea`` and ``coffee``),
centre-cropped to a square and resized (Lanczos) to ``--size`` pixels (128: the CPU demo restores
each in seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from train.data import HELD_OUT, load_photo

OUT = Path(__file__).resolve().parent.parent / "jobs" / "assets" / "samples"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in HELD_OUT:
        arr = load_photo(name)
        h, w = arr.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = Image.fromarray((arr[top:top + side, left:left + side] * 255 + 0.5).astype("uint8"))
        img = img.resize((args.size, args.size), Image.Resampling.LANCZOS)
        img.save(args.out / f"{name}.png", optimize=True)
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
