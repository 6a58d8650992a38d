"""cluster.images and cluster.storage: decoding edge cases (each reason named), PNG round trips,
single-write commits."""

from __future__ import annotations

import io as _io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cluster import images, storage
from ddnm.restoration import match_channels


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = _io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_round_trip_8_and_16_bit():
    x = torch.rand(3, 9, 7)
    y = images.decode_image(images.encode_png(x), "a.png")
    assert y.shape == (3, 9, 7) and (y - x).abs().max() <= 0.5 / 255 + 1e-6
    g = torch.rand(1, 5, 6)
    data = images.encode_png(g, bits=16)
    assert Image.open(_io.BytesIO(data)).mode.startswith("I;16")
    assert (images.decode_image(data, "g.png") - g).abs().max() <= 0.5 / 65535 + 1e-6
    rgb16 = Image.open(_io.BytesIO(images.encode_png(x, bits=16)))
    assert rgb16.size == (7, 9)  # a valid 16-bit RGB PNG (Pillow reads it reduced to 8 bits)


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_formats(fmt, ext):
    arr = np.full((6, 4, 3), 128, np.uint8)
    x = images.decode_image(_save(Image.fromarray(arr), fmt), f"x.{ext}")
    assert x.shape == (3, 6, 4) and abs(float(x.mean()) - 128 / 255) < 0.02


def test_grey_rgba_palette_and_channels():
    grey = images.decode_image(_save(Image.new("L", (4, 3), 200), "PNG"), "g.png")
    assert grey.shape == (1, 3, 4)
    assert match_channels(grey[None], 3).shape == (1, 3, 3, 4)
    rgba = images.decode_image(_save(Image.new("RGBA", (4, 3), (10, 20, 30, 0)), "PNG"), "a.png")
    assert rgba.shape == (3, 3, 4) and abs(float(rgba[2, 0, 0]) - 30 / 255) < 1e-6  # alpha dropped
    pal = images.decode_image(_save(Image.new("RGB", (4, 3), (255, 0, 0)).convert("P"), "PNG"), "p.png")
    assert pal.shape == (3, 3, 4)
    red = images.decode_image(_save(Image.new("RGB", (4, 3), (255, 0, 0)), "PNG"), "r.png")
    luma = match_channels(red[None], 1)[0]
    assert luma.shape == (1, 3, 4) and abs(float(luma.max()) - 0.299) < 1e-3


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert images.decode_image(_save(img, "JPEG", exif=exif), "r.jpg").shape == (3, 6, 4)


def test_bad_inputs_name_the_file_and_the_reason():
    good = images.encode_png(torch.rand(3, 16, 16))
    cases = {"t.png": (good[: len(good) // 2], "truncated"), "x.jpg": (b"not an image", "not an image"),
             "e.png": (b"", "empty file")}
    for name, (data, reason) in cases.items():
        with pytest.raises(images.BadInput, match=rf"^{name}: .*{reason}") as e:
            images.decode_image(data, name)
        assert e.value.name == name


def test_masks_png_and_npy():
    m = images.decode_mask(images.encode_png(torch.tensor([[[0.0, 1.0], [0.9, 0.2]]])), "m.png")
    assert m.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    buf = _io.BytesIO()
    np.save(buf, np.array([[0, 3], [1, 0]]))
    assert images.decode_mask(buf.getvalue(), "m.npy").tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    with pytest.raises(images.BadInput, match="m.npy: not a valid .npy"):
        images.decode_mask(b"garbage", "m.npy")


def test_local_write_is_atomic_and_overwrites(tmp_path):
    url = storage.join(str(tmp_path), "a/b", "c.bin")
    storage.write_bytes(url, b"one")
    storage.write_bytes(url, b"two")
    assert storage.read_bytes(url) == b"two"
    assert os.listdir(tmp_path / "a" / "b") == ["c.bin"]  # no temporary files left
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(str(tmp_path), "missing"))


def test_join():
    assert storage.join("s3://b/out/", "images", "/a/b.png") == "s3://b/out/images/a/b.png"
    assert storage.join("/tmp/x", "", "y") == "/tmp/x/y"


def test_remove_partial_writes_deletes_only_what_a_killed_write_left(tmp_path):
    from cluster import storage

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "shard-000001.parquet").write_bytes(b"committed")
    (folder / ".tmp-abc-shard-000002.parquet").write_bytes(b"half")
    (folder / ".hidden-note").write_bytes(b"keep")
    assert storage.remove_partial_writes(str(folder)) == [".tmp-abc-shard-000002.parquet"]
    assert sorted(p.name for p in folder.iterdir()) == [".hidden-note", "shard-000001.parquet"]
    assert storage.remove_partial_writes(str(tmp_path / "none")) == []
