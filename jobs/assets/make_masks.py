"""Draw the bundled inpainting masks (white = keep, black = hole): python jobs/assets/make_masks.py"""

from pathlib import Path

from PIL import Image, ImageDraw


def draw(n: int) -> Image.Image:
    m = Image.new("L", (n, n), 255)
    d = ImageDraw.Draw(m)
    w = max(2, n // 16)
    d.line([(n * 0.1, n * 0.2), (n * 0.9, n * 0.75)], fill=0, width=w)
    d.line([(n * 0.15, n * 0.85), (n * 0.6, n * 0.1)], fill=0, width=w)
    d.rectangle([n * 0.55, n * 0.55, n * 0.8, n * 0.8], fill=0)
    return m


if __name__ == "__main__":
    for n in (32, 64, 128, 256):
        draw(n).save(Path(__file__).parent / "masks" / f"mask-{n}x{n}.png", optimize=True)
