"""A job over a folder of mixed sizes (a 1x1 reject, 63x65, 100x300, 256x256, 600x400, a 16-bit scan, an
Adobe-RGB photo with EXIF): every image ends restored or failed with a reason, on the bundled prior and
on a random-weight public architecture of native size 16 (`tiny`), through the CLI on the local Ray."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from cluster.archival import png_header
from cluster.images import _png16
from jobs.cli import main
from tests.unit.test_anysize import matrix_profile

pytestmark = pytest.mark.integration
SIZES = {"dot.png": (1, 1), "odd.png": (63, 65), "tall.png": (100, 300), "square.png": (256, 256),
         "wide.png": (600, 400)}


def _smooth(w, h, seed):
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
    return small.resize((w, h), Image.BILINEAR)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    src = tmp_path_factory.mktemp("mixed")
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        _smooth(w, h, i).save(src / name)
    scan = np.asarray(_smooth(48, 40, 7), np.uint16) * 257 + 100
    (src / "scan16.png").write_bytes(_png16(scan.transpose(2, 0, 1).astype(">u2")))
    exif = Image.Exif()
    exif[0x010F] = "ScanCo"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>archive 42</x:xmpmeta>")
    _smooth(40, 32, 8).save(src / "adobe.png", icc_profile=matrix_profile(), exif=exif.tobytes(),
                            pnginfo=info)
    return src


def _check(out):
    df = pd.read_parquet(out / "metrics.parquet").set_index("key")
    assert sorted(df.index) == sorted([*SIZES, "scan16.png", "adobe.png"])
    assert df.loc["dot.png", "status"] == "failed" and "scale" in df.loc["dot.png", "error"]
    ok = df.drop(index="dot.png")
    assert (ok["status"] == "ok").all(), ok[ok["status"] != "ok"]["error"].tolist()
    assert ok.loc["odd.png", "modcrop"] == "63x65 -> 60x64"
    assert ok.loc["odd.png", ["out_width", "out_height"]].tolist() == [60, 64]
    for name, (w, h) in SIZES.items():
        if name != "dot.png":
            assert Image.open(out / "images" / name).size == (w - w % 4, h - h % 4), name
    assert ok.loc["scan16.png", "bit_depth"] == 16
    assert png_header((out / "images" / "scan16.png").read_bytes()) == (16, 2)
    assert ok.loc["adobe.png", "icc_profile"] == "Adobe-like RGB"
    restored = Image.open(out / "images" / "adobe.png")
    assert restored.getexif()[0x010F] == "ScanCo" and "icc_profile" in restored.info
    assert b"archive 42" in io.BytesIO((out / "images" / "adobe.png").read_bytes()).getvalue()
    return df


def test_mixed_sizes_on_a_random_public_architecture(mixed, tmp_path, ray_local):
    out = tmp_path / "tiny"
    code = main(["run", "--mode", "evaluate",
                 "--input", str(mixed), "--output", str(out), "--task", "sr_avgpool",
                 "--set", "scale=4", "--model", "tiny", "--checkpoint", "random", "--steps", "2",
                 "--tile", "32",
                 "--tile-overlap", "8", "--workers", "1", "--gpus-per-worker", "1", "--shard-size", "2"])
    assert code == 3  # the 1x1 image failed, with its reason
    df = _check(out)
    ok = df[df["status"] == "ok"]
    assert (ok["canvas"] == "tiled").all()
    assert ok.loc["wide.png", "tiles"] == 25 * 17 and ok.loc["square.png", "tiles"] == 11 * 11
    import json
    plan = json.loads((out / "_plan.json").read_text())
    alone = [s["keys"] for s in plan["shards"] if "wide.png" in s["keys"]]
    assert alone == [["wide.png"]]  # 600x400 costs more than a shard: a shard of its own


def test_mixed_sizes_on_the_bundled_prior(mixed, tmp_path, ray_local):
    out = tmp_path / "prior"
    code = main(["run", "--mode", "evaluate",
                 "--input", str(mixed), "--output", str(out), "--task", "sr_avgpool",
                 "--set", "scale=4", "--steps", "2", "--workers", "1", "--gpus-per-worker", "1",
                 "--canvas", "tiled",
                 "--tile", "64", "--tile-overlap", "16"])
    assert code == 3
    df = _check(out)
    assert (df[df["status"] == "ok"]["canvas"] == "tiled").all()
