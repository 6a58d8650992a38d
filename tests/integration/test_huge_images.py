"""Huge images beside normal ones (issue 19): each gets a row, the normal ones are unaffected.

A 6000x6000 photo and a 20000x200 strip above the job's --max-pixels, a header that claims
100000x100000 pixels (a decompression bomb: a few hundred bytes on disk), a 3000x3000 header between
the job's limit and Pillow's: each fails with the reason, read from its header before any decoding. A
long thin strip under the limit is restored on tiles. The normal images' rows equal those of a run
without the huge ones (their noise depends only on the key).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import main
from jobs.errors import EXIT_FAILED_IMAGES
from tests.integration.test_jobs_local import save_png

pytestmark = pytest.mark.integration
TINY = ["--model", "tiny", "--steps", "2", "--workers", "1", "--task", "sr_avgpool", "--set", "scale=2",
        "--mode", "evaluate"]


def claimed_png(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height but whose data is one tiny deflate stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_huge_images_each_get_a_row_and_leave_the_others_alone(tmp_path, ray_local, capsys):
    normal, mixed = tmp_path / "normal", tmp_path / "mixed"
    for folder in (normal, mixed):
        for i in range(3):
            save_png(folder / f"n{i}.png", 16, i)
    Image.new("RGB", (6000, 6000), (120, 80, 40)).save(mixed / "photo6000.png")
    Image.new("RGB", (20000, 200), (10, 200, 90)).save(mixed / "strip20000.png")
    claimed_png(mixed / "bomb.png", 100_000, 100_000)
    claimed_png(mixed / "claims3000.png", 3000, 3000)
    g = np.random.default_rng(0).integers(0, 255, (2, 100, 3), dtype=np.uint8)
    Image.fromarray(g).resize((1600, 24), Image.BILINEAR).save(mixed / "thin1600.png")

    assert main(["run", "--input", str(normal), "--output", str(tmp_path / "out_n"), *TINY]) == 0
    code = main(["run", "--input", str(mixed), "--output", str(tmp_path / "out_m"), *TINY,
                 "--max-pixels", "1000000"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED_IMAGES, err  # the job finished; some images failed
    assert "Traceback" not in err
    df = pd.read_parquet(tmp_path / "out_m" / "metrics.parquet").set_index("key")
    assert sorted(df.index) == sorted(["n0.png", "n1.png", "n2.png", "photo6000.png", "strip20000.png",
                                       "bomb.png", "claims3000.png", "thin1600.png"])  # each once
    for key, size in (("photo6000.png", "6000x6000 = 36.0 MP"), ("strip20000.png", "20000x200 = 4.0 MP"),
                      ("claims3000.png", "3000x3000 = 9.0 MP")):
        assert df.loc[key, "status"] == "failed"
        assert f"image too large: {size}, above the job's max_pixels 1 MP (read from its header, not " \
               "decoded" in df.loc[key, "error"], df.loc[key, "error"]
    assert df.loc["bomb.png", "status"] == "failed"
    assert "header claims more pixels than can be decoded safely" in df.loc["bomb.png", "error"]
    thin = df.loc["thin1600.png"]
    assert thin["status"] == "ok" and thin["canvas"] == "tiled" and thin["tiles"] > 1
    images = {p.name for p in (tmp_path / "out_m" / "images").iterdir()}
    assert images == {"n0.png", "n1.png", "n2.png", "thin1600.png"}  # no image without its ok row
    base = pd.read_parquet(tmp_path / "out_n" / "metrics.parquet").set_index("key")
    for k in ("n0.png", "n1.png", "n2.png"):
        assert df.loc[k, "status"] == "ok"
        for metric in ("psnr", "consistency"):
            assert df.loc[k, metric] == base.loc[k, metric]
        a = np.asarray(Image.open(tmp_path / "out_m" / "images" / k))
        b = np.asarray(Image.open(tmp_path / "out_n" / "images" / k))
        assert np.array_equal(a, b)
