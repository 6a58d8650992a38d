"""Images of any size at the job's edges: modcrop, cost-based shards, the host-memory refusal, 16-bit
round trips, ICC -> sRGB, EXIF / XMP carried (cluster/archival.py, jobs/sizes.py, jobs/plan.py)."""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import ddnm
from cluster import archival
from cluster.images import _png16, decode_image_meta, encode_png
from ddnm.canvas import Canvas
from ddnm.restoration import Task
from jobs import plan as plan_mod
from jobs.spec import JobSpec

ADOBE_D50 = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
"""Adobe RGB (1998) colorants adapted to D50 (rXYZ, gXYZ, bXYZ), gamma 563/256."""


def matrix_profile(colorants=ADOBE_D50, gamma=563 / 256, name="Adobe-like RGB") -> bytes:
    """A minimal ICC v2 RGB matrix-shaper display profile."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(v):
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    text = name.encode() + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 12 + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"cprt", b"text\0\0\0\0none\0"),
            (b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])), (b"bXYZ", xyz(colorants[2])),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249))
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


# ------------------------------------------------------------------------------------------- modcrop
def test_modcrop_crops_the_ground_truth_top_left_to_the_scale():
    task = Task.of("sr_bicubic", {"scale": 4})
    assert task.modcrop((63, 65)) == (60, 64) and task.modcrop((64, 64)) == (64, 64)
    assert task.modcrop((1, 1)) == (1, 1)  # nothing to crop to: Task.check says why
    assert Task.of("colorize").modcrop((63, 65)) == (63, 65)
    assert Task.of("cs_block", {"block": 8}).modcrop((20, 17)) == (20, 17)  # padded instead, below
    x = torch.rand(1, 3, 63, 65)
    prepared = task.prepare(x, mode="evaluate", model_channels=3)
    assert torch.equal(prepared, x[..., :60, :64])
    assert task.prepare(x, mode="restore", model_channels=3).shape == x.shape  # observations are not cut
    assert task.check(tuple(prepared.shape[1:]), mode="evaluate", model_channels=3) is None


def test_canvas_auto_is_whole_at_the_native_size_else_tiled():
    import ddnm.models

    tiny = ddnm.models.build("tiny")
    assert Canvas().resolve(tiny, (3, 16, 16)) == "whole" and Canvas().resolve(tiny, (3, 16, 40)) == "tiled"
    assert Canvas(tile=16, overlap=4).tiles(tiny, (3, 16, 40)) == 3
    with pytest.raises(ValueError, match="canvas must be one of"):
        Canvas(kind="mosaic")
    with pytest.raises(ValueError, match="overlap must be < tile=16"):
        Canvas(tile=16, overlap=16)


# ---------------------------------------------------------------------------------------- sharding
def test_cost_shards_pack_small_images_and_put_a_big_one_alone():
    keys = [f"s{i:02d}" for i in range(10)] + ["big"]
    costs = {k: 1 for k in keys} | {"big": 100}
    shards = plan_mod.make_shards(keys, 4, costs=costs, budget=4)
    assert [s["keys"] for s in shards] == [["big"], ["s00", "s01", "s02", "s03"],
                                           ["s04", "s05", "s06", "s07"], ["s08", "s09"]]
    assert [s["cost"] for s in shards] == [100, 4, 4, 2]


def _png(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_plan_cuts_by_cost_and_stores_it(tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        _png(src / f"t{i}.png", 16, 16, i)
    _png(src / "scan.png", 160, 96)  # 60 thumbnails' worth
    spec = JobSpec.build(input=str(src), output=str(tmp_path / "out"), task="sr_avgpool", set=["scale=4"],
                         model="tiny", checkpoint="random", steps=2, shard_size=4)
    p = plan_mod.prepare(spec)
    assert [s["keys"] for s in p.shards] == [["scan.png"], ["t0.png", "t1.png", "t2.png", "t3.png"],
                                             ["t4.png", "t5.png"]]
    saved = json.loads((tmp_path / "out" / "_plan.json").read_text())
    assert saved["shard_cost"] == 4 * 16 * 16 * 2 and saved["shards"][0]["cost"] == 160 * 96 * 2
    assert p.total_cost == 160 * 96 * 2 + 6 * 16 * 16 * 2
    _png(src / "u.png", 16, 16)  # incremental: new keys use the stored budget
    p2 = plan_mod.prepare(spec.model_copy(update={"incremental": True}))
    assert p2.shards[-1] == {"shard_id": 3, "keys": ["u.png"], "cost": 512}


def test_progress_eta_counts_cost(monkeypatch):
    from jobs import progress as prog

    clock = iter([0.0, 0.0, 10.0, 10.0])
    monkeypatch.setattr(prog.time, "monotonic", lambda: next(clock))
    p = prog.Progress(4, stream=io.StringIO(), tty=False, cost_total=100)
    p.update(3, 0, cost=10)  # 3 small images are 10% of the work: 90 s left, not 3.3 s
    assert p.seconds_left() == pytest.approx(90.0)


# ------------------------------------------------------------------------------------------ memory
def test_a_canvas_too_large_for_host_memory_fails_before_sampling(monkeypatch):
    from cluster import restorer
    from cluster.config import WorkerConfig

    r = restorer.BatchRestorer(WorkerConfig.flat(input_url="x", output_url="y", task="sr_avgpool",
                                            task_settings={"scale": 4}, model="tiny", steps=2),
                               torch.device("cpu"))
    monkeypatch.setattr(restorer, "host_memory_available", lambda: 2**30)
    assert r.check_memory((3, 256, 256)) is None
    msg = r.check_memory((3, 8000, 6000))
    assert msg.startswith("too large for this worker: a 6000x8000 canvas needs about") and "1.0 GiB" in msg


# ------------------------------------------------------------------------------------ archival edge
def test_16_bit_rgb_and_grey_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (3, 9, 13)).astype(">u2")
    x, meta = decode_image_meta(_png16(a), "scan.png")
    assert meta.bits == 16 and np.array_equal(np.rint(x.numpy() * 65535).astype(np.uint16), a)
    out = archival.tag_png(encode_png(x, bits=meta.bits), meta)
    assert archival.png_header(out) == (16, 2)
    assert torch.equal(decode_image_meta(out, "o.png")[0], x)
    grey = rng.integers(0, 65536, (7, 5)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    g, gmeta = decode_image_meta(buf.getvalue(), "g.png")
    assert gmeta.bits == 16 and np.array_equal(np.rint(g[0].numpy() * 65535).astype(np.uint16), grey)
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a.transpose(1, 2, 0).astype(np.uint16))
    t, tmeta = decode_image_meta(buf.getvalue(), "scan.tif")
    assert tmeta.bits == 16 and torch.equal(t, x)


def test_png_filters_of_16_bit_rgb_are_undone():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 65536, (4, 3, 3)).astype(">u2")  # (H, W, C)
    rows = a.reshape(4, -1).view(np.uint8).astype(np.int32)
    bpp, prev, raw = 6, np.zeros(rows.shape[1], np.int32), b""
    for r, f in zip(rows, (1, 2, 3, 4), strict=True):  # Sub, Up, Average, Paeth
        left = np.concatenate([np.zeros(bpp, np.int32), r[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            pa, pb, pc = abs(prev - ul), abs(left - ul), abs(left + prev - 2 * ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        raw += bytes([f]) + ((r - pred) & 255).astype(np.uint8).tobytes()
        prev = r
    png = _png16(a.transpose(2, 0, 1))
    end = png.index(b"IDAT") - 4
    idat = archival._chunk(b"IDAT", __import__("zlib").compress(raw))
    assert np.array_equal(archival.decode_png16(png[:end] + idat + archival._chunk(b"IEND", b"")), a)


def _adobe_photo(tmp_path, bits=8):
    rng = np.random.default_rng(3)
    rgb = rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)
    icc = matrix_profile()
    exif = Image.Exif()
    exif[0x010F] = "ScanCo"
    exif[0x0112] = 1
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>archive 42</x:xmpmeta>")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", icc_profile=icc, exif=exif.tobytes(), pnginfo=info)
    return rgb, icc, buf.getvalue()


def test_icc_profile_is_converted_to_srgb_and_the_output_tagged(tmp_path):
    rgb, icc, data = _adobe_photo(tmp_path)
    x, meta = decode_image_meta(data, "adobe.png")
    assert meta.bits == 8 and meta.icc_profile == "Adobe-like RGB"
    got = x.permute(1, 2, 0).numpy()
    assert np.abs(got - rgb / 255.0).max() > 0.02  # the pixels were converted ...
    expect = archival.icc_to_srgb_float(rgb / 255.0, icc)  # ... as the profile's matrix and curves say
    assert np.abs(got - expect).max() < 2.5 / 255
    ref = ImageCms.profileToProfile(Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                    ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert np.abs(np.rint(got * 255) - np.asarray(ref, np.float64)).max() <= 1  # ImageCms did it
    out = Image.open(io.BytesIO(archival.tag_png(encode_png(x), meta)))
    desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"])))
    assert "sRGB" in desc
    # a 16-bit image with the same profile is converted in float, to the same colours
    a16 = (rgb.astype(np.uint16) * 257).astype(">u2").transpose(2, 0, 1)
    png16 = _png16(a16)
    end = 8 + 25
    png16 = png16[:end] + archival._chunk(b"iCCP", b"a\0\0" + __import__("zlib").compress(icc)) + png16[end:]
    x16, meta16 = decode_image_meta(png16, "adobe16.png")
    assert meta16.bits == 16 and meta16.icc_profile == "Adobe-like RGB"
    assert np.abs(x16.permute(1, 2, 0).numpy() - expect).max() < 1e-6


def test_exif_and_xmp_are_carried_to_the_output(tmp_path):
    _, _, data = _adobe_photo(tmp_path)
    x, meta = decode_image_meta(data, "adobe.png")
    out = Image.open(io.BytesIO(archival.tag_png(encode_png(x), meta)))
    assert out.getexif()[0x010F] == "ScanCo"
    assert b"archive 42" in (out.info.get("xmp") or out.info["XML:com.adobe.xmp"].encode())
    plain, pmeta = decode_image_meta(encode_png(x), "plain.png")
    assert pmeta == archival.ImageMeta() and archival.tag_png(b"same", pmeta) == b"same"


@pytest.mark.parametrize(("task", "settings", "size", "padded"), [
    ("cs_walsh", {}, (36, 52), (64, 64)), ("cs_block", {"block": 8}, (20, 17), (24, 24))])
def test_operators_of_special_sizes_are_padded_and_cropped_back(task, settings, size, padded):
    """Evaluate mode at an odd size: the operator is built on the padded canvas, the result is the
    image's own size, consistent on the whole canvas, and scored on the image's pixels."""
    spec = Task.of(task, settings)
    assert spec.padded_size(size) == padded
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    assert spec.x_shape((3, *size), mode="evaluate", model_channels=3) == (3, *padded)
    assert spec.check((3, *size), mode="evaluate", model_channels=3) is None
    res = ddnm.restore(x, task, "tiny", mode="evaluate", steps=2, canvas="tiled", **settings)
    assert res.images.shape == (1, 3, *size) and res.metrics[0]["consistency"] < 1e-3
    assert math.isfinite(res.metrics[0]["psnr"])
