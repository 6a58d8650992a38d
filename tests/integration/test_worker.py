"""RestoreWorker as a Ray actor on a logical GPU: local folders and S3 (moto) through s3fs, with corrupt
inputs becoming failed rows; plus the pipeline details (masks, panels, batch fallback) without Ray."""

from __future__ import annotations

import io as _io

import numpy as np
import pytest
import ray
import s3fs
import torch
from PIL import Image

from cluster import images, storage
from cluster.config import WorkerConfig
from cluster.outputs import output_name
from cluster.rows import NAMES as ROW_FIELDS
from cluster.worker import RestoreWorker
from tests.integration._stubs import StubWorker, stub_worker

pytestmark = pytest.mark.integration


def config(input_url: str, output_url: str, **kw) -> WorkerConfig:
    cfg = dict(input_url=input_url, output_url=output_url, storage_options={}, mode="evaluate",
               task="sr_avgpool", task_settings={"scale": 2}, mask_url=None, model="tiny",
               checkpoint="random", dtype="fp32", steps=2, eta=0.85, sigma_y=0.0, travel=[1, 1, 1],
               samples=1, batch_size=None, seed=0, panels=False, threads=1)
    cfg.update(kw)
    return WorkerConfig.flat(**cfg)


def write_inputs(put, n: int = 5, size: int = 16) -> list[str]:
    """n good PNG/JPEG images plus the three corrupt files; returns every key (corrupt ones last)."""
    g = torch.Generator().manual_seed(1)
    keys = []
    for i in range(n):
        key = f"set{i % 2}/im{i}.png" if i % 3 else f"set{i % 2}/im{i}.jpg"
        arr = (torch.rand(size, size, 3, generator=g).numpy() * 255).astype(np.uint8)
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG" if key.endswith(".png") else "JPEG")
        put(key, buf.getvalue())
        keys.append(key)
    good = images.encode_png(torch.rand(3, size, size, generator=g))
    put("bad/truncated.png", good[: len(good) // 2])
    put("bad/notes.jpg", b"this is a text file, not a JPEG\n")
    put("bad/empty.png", b"")
    return keys + ["bad/truncated.png", "bad/notes.jpg", "bad/empty.png"]


def check_summary(summary: dict, keys: list[str]) -> None:
    rows = summary["rows"]
    assert [r["key"] for r in rows] == keys
    assert all(set(r) == set(ROW_FIELDS) for r in rows)
    by_key = {r["key"]: r for r in rows}
    reasons = {"bad/truncated.png": "truncated", "bad/notes.jpg": "not an image",
               "bad/empty.png": "empty file"}
    for key, reason in reasons.items():
        r = by_key[key]
        assert r["status"] == "failed" and r["output"] is None
        assert r["error"].startswith(key + ":") and reason in r["error"], r["error"]
    ok = [r for r in rows if r["key"] not in reasons]
    assert all(r["status"] == "ok" and r["error"] is None for r in ok), [r["error"] for r in ok]
    for r in ok:
        assert np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["consistency"] >= 0
        assert r["model_calls"] == 2 and (r["out_height"], r["out_width"]) == (16, 16)
    assert 0 < summary["busy_seconds"] <= summary["seconds"]


def test_worker_actor_local_folder(ray_local, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    keys = write_inputs(lambda k, b: storage.write_bytes(storage.join(str(inp), k), b))
    actor = ray.remote(RestoreWorker).options(num_gpus=1, num_cpus=1).remote(config(str(inp), str(out)))
    summary = ray.get(actor.restore_shard.remote({"shard_id": 7, "keys": keys, "attempt": 1}))
    ray.kill(actor)
    check_summary(summary, keys)
    assert summary["shard_id"] == 7 and summary["attempt"] == 1
    for r in summary["rows"]:
        if r["status"] == "ok":
            assert r["output"] == f"{out}/images/{output_name(r['key'])}"
            assert Image.open(r["output"]).size == (16, 16)
    assert len(list((out / "images").rglob("*"))) - 2 == 5  # 5 images in 2 sub-folders


def test_worker_actor_s3(ray_local, s3_server):
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("ddnm-in")
    fs.mkdir("ddnm-out")
    keys = write_inputs(lambda k, b: fs.pipe(f"ddnm-in/photos/{k}", b), n=4)
    cfg = config("s3://ddnm-in/photos", "s3://ddnm-out/job1", storage_options={"endpoint_url": s3_server},
                 panels=True)
    actor = ray.remote(RestoreWorker).options(num_gpus=1, num_cpus=1).remote(cfg)
    summary = ray.get(actor.restore_shard.remote({"shard_id": 0, "keys": keys, "attempt": 0}))
    ray.kill(actor)
    check_summary(summary, keys)
    fs.invalidate_cache()
    written = sorted(fs.find("ddnm-out/job1/images"))
    assert written == sorted(f"ddnm-out/job1/images/{output_name(k)}" for k in keys[:4])
    panel = Image.open(_io.BytesIO(fs.cat(f"ddnm-out/job1/panels/{output_name(keys[0])}")))
    assert panel.size == (3 * 16 + 2 * 2, 16)  # observation | restored | ground truth
    assert summary["rows"][0]["output"] == f"s3://ddnm-out/job1/images/{output_name(keys[0])}"


def test_restore_mode_per_image_masks_and_samples(tmp_path):
    """Inpainting in restore mode with a mask per image (png and npy), K = 2 samples -> std maps."""
    inp, masks, out = str(tmp_path / "in"), str(tmp_path / "masks"), str(tmp_path / "out")
    g = torch.Generator().manual_seed(2)
    for k in ("a.png", "b.png", "c.png"):
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, 16, 16, generator=g)))
    keep = np.ones((16, 16), np.float32)
    keep[4:12, 4:12] = 0
    storage.write_bytes(storage.join(masks, "a.png"), images.encode_png(torch.from_numpy(keep)[None]))
    buf = _io.BytesIO()
    np.save(buf, keep)
    storage.write_bytes(storage.join(masks, "b.npy"), buf.getvalue())  # c has no mask
    cfg = config(inp, out, mode="restore", task="inpaint", task_settings={}, mask_url=masks, samples=2,
                 panels=True)
    summary = RestoreWorker(cfg).restore_shard({"shard_id": 0, "keys": ["a.png", "b.png", "c.png"]})
    rows = {r["key"]: r for r in summary["rows"]}
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "ok"
    assert rows["a.png"]["psnr"] is None and rows["a.png"]["consistency"] is not None
    assert rows["c.png"]["status"] == "failed" and "no mask found" in rows["c.png"]["error"]
    assert Image.open(f"{out}/std/a.png").size == (16, 16)
    assert Image.open(f"{out}/panels/b.png").size == (3 * 16 + 2 * 2, 16)  # input | observation | restored


def test_batch_failure_falls_back_to_one_by_one(tmp_path):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    keys = ["a.png", "boom.png", "c.png", "d.png", "small.png"]
    for k in keys:
        side = 8 if k == "small.png" else 16
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, side, 16)))
    cfg = config(inp, out, batch_size=4)
    w = stub_worker(size=16)(cfg)
    rows = {r["key"]: r for r in w.restore_shard({"shard_id": 0, "keys": keys + ["gone.png"]})["rows"]}
    assert [k for k, r in rows.items() if r["status"] == "ok"] == ["a.png", "c.png", "d.png"]
    assert "out of memory" in rows["boom.png"]["error"]
    assert rows["small.png"]["error"].startswith("small.png: wrong size")
    assert (rows["small.png"]["in_height"], rows["small.png"]["in_width"]) == (8, 16)
    assert rows["gone.png"]["error"] == "gone.png: file not found"
    assert w.sampler.calls == [1, 1, 1]  # the first image alone; a batch of 3 failed, then one by one


def test_the_first_batch_of_a_worker_is_one_image(tmp_path):
    """A first result in seconds: the worker's very first batch holds one image, later ones are full."""
    inp = str(tmp_path / "in")
    keys = [f"k{i}.png" for i in range(9)]
    for k in keys:
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, 16, 16)))
    w = stub_worker()(config(inp, str(tmp_path / "out"), batch_size=4))
    w.restore_shard({"shard_id": 0, "keys": keys[:5]})
    w.restore_shard({"shard_id": 1, "keys": keys[5:]})
    assert w.sampler.calls == [1, 4, 4]


def test_failed_write_is_a_failed_row(tmp_path):
    inp = str(tmp_path / "in")
    storage.write_bytes(storage.join(inp, "a.png"), images.encode_png(torch.rand(3, 16, 16)))
    (tmp_path / "out").write_text("a file where the output folder should be")
    w = StubWorker(config(inp, str(tmp_path / "out")))
    (row,) = w.restore_shard({"shard_id": 0, "keys": ["a.png"]})["rows"]
    assert row["status"] == "failed" and row["error"].startswith("a.png:") and row["output"] is None


@pytest.mark.parametrize("where", ["read", "write"])
def test_unusable_storage_stops_the_shard_instead_of_failing_rows(tmp_path, monkeypatch, where):
    """Unreachable or full storage is not one image's problem: restore_shard raises it (no rows), the
    shard runs again when the storage is back; the reader stops at the first one."""
    inp = str(tmp_path / "in")
    keys = [f"k{i:02d}.png" for i in range(12)]
    for k in keys:
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, 16, 16)))
    error = (storage.StorageUnreachable if where == "read" else storage.StorageFull)("s3://b/x", "why")
    calls = []
    real = getattr(storage, f"{where}_bytes")

    def failing(url, *args):
        calls.append(url)
        if url.endswith("k01.png") or where == "write":
            raise error
        return real(url, *args)

    monkeypatch.setattr(storage, f"{where}_bytes", failing)
    w = StubWorker(config(inp, str(tmp_path / "out"), batch_size=1))
    with pytest.raises(type(error), match="why"):
        w.restore_shard({"shard_id": 0, "keys": keys})
    if where == "read":  # the reader's window (4) and one more, not the whole shard
        assert len(calls) <= 5, calls


def test_restore_mode_sr_and_grey_colorize(tmp_path):
    inp = str(tmp_path / "in")
    storage.write_bytes(storage.join(inp, "lr.png"), images.encode_png(torch.rand(3, 8, 8)))
    storage.write_bytes(storage.join(inp, "grey.png"), images.encode_png(torch.rand(1, 16, 16)))
    sr = RestoreWorker(config(inp, str(tmp_path / "sr"), mode="restore"))
    (row,) = sr.restore_shard({"shard_id": 0, "keys": ["lr.png"]})["rows"]
    assert row["status"] == "ok", row["error"]
    assert (row["in_height"], row["out_height"]) == (8, 16) and row["psnr"] is None
    col = RestoreWorker(config(inp, str(tmp_path / "col"), mode="restore", task="colorize", task_settings={}))
    (row,) = col.restore_shard({"shard_id": 0, "keys": ["grey.png"]})["rows"]
    assert row["status"] == "ok", row["error"]
    assert Image.open(row["output"]).mode == "RGB"


def test_results_do_not_depend_on_the_batch(tmp_path):
    """Noise is keyed by (seed, key): batch size 1 and 3 give the same images and metrics."""
    inp = str(tmp_path / "in")
    keys = [f"{i}.png" for i in range(3)]
    for k in keys:
        storage.write_bytes(storage.join(inp, k), images.encode_png(torch.rand(3, 16, 16)))
    rows = {}
    for bs in (1, 3):
        w = RestoreWorker(config(inp, str(tmp_path / f"out{bs}"), batch_size=bs, sigma_y=0.05))
        rows[bs] = w.restore_shard({"shard_id": 0, "keys": keys})["rows"]
    for a, b in zip(rows[1], rows[3], strict=True):
        assert a["status"] == b["status"] == "ok"
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
        ia = np.asarray(Image.open(a["output"]), dtype=int)
        ib = np.asarray(Image.open(b["output"]), dtype=int)
        assert np.abs(ia - ib).max() <= 1


def test_s3_endpoint_from_the_environment(s3_server, tmp_path):
    """No storage_options: s3fs finds the endpoint in AWS_ENDPOINT_URL, as for any s3fs program."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir("ddnm-env")
    fs.pipe("ddnm-env/in/a.png", images.encode_png(torch.rand(3, 16, 16)))
    w = StubWorker(config("s3://ddnm-env/in", "s3://ddnm-env/out"))
    (row,) = w.restore_shard({"shard_id": 0, "keys": ["a.png"]})["rows"]
    assert row["status"] == "ok", row["error"]
    fs.invalidate_cache()
    assert fs.exists("ddnm-env/out/images/a.png")


def test_keys_differing_only_by_extension_get_outputs_of_their_own(tmp_path):
    """`a/p.jpg` and `a/p.png` once both went to images/a/p.png: one restored image was lost."""
    inp, out = tmp_path / "in", tmp_path / "out"
    for key, value, fmt in (("a/p.jpg", 30, "JPEG"), ("a/p.png", 220, "PNG")):
        (inp / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(inp / key, format=fmt)
    cfg = config(str(inp), str(out), panels=True)
    rows = RestoreWorker(cfg).restore_shard({"shard_id": 0, "keys": ["a/p.jpg", "a/p.png"]})["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["output"] for r in rows] == [f"{out}/images/a/p.jpg.png", f"{out}/images/a/p.png"]
    jpg, png = (np.asarray(Image.open(r["output"]), np.float64).mean() for r in rows)
    assert abs(jpg - 30) < abs(jpg - 220) and abs(png - 220) < abs(png - 30)  # each holds its own input's
    assert (out / "panels" / "a" / "p.jpg.png").is_file() and (out / "panels" / "a" / "p.png").is_file()
