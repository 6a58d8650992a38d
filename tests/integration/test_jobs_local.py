"""Jobs on local folders through the CLI's main() on the shared local Ray, with the tiny model (16 px):
a csv manifest with panels and two samples per image, restore mode from low-res inputs, a dry run."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import main
from jobs.progress import Progress

pytestmark = pytest.mark.integration

TINY = ["--model", "tiny", "--checkpoint", "random", "--steps", "2", "--mode", "evaluate"]


def save_png(path, size, seed, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (4, 4, 3) if mode == "RGB" else (4, 4)
    small = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    small.resize((size, size), Image.BILINEAR).save(path)


def test_manifest_panels_and_samples(tmp_path, ray_local):
    src = tmp_path / "photos"
    keys = ["a.png", "b.png", "nested/c.png", "nested/d.png"]
    for i, key in enumerate([*keys, "not-listed.png"]):
        save_png(src / key, 16, i)
    manifest = src / "list.csv"
    manifest.write_text("key,label\n" + "".join(f"{k},x\n" for k in keys))
    out = tmp_path / "out"
    code = main(["run", "--input", str(manifest), "--output", str(out), "--task", "colorize", *TINY,
                 "--samples", "2", "--panels", "--workers", "1", "--gpus-per-worker", "1",
                 "--shard-size", "3"])
    assert code == 0
    for key in keys:
        stem = key.removesuffix(".png")
        for part in ("images", "panels", "std"):
            assert (out / part / f"{stem}.png").is_file(), (part, key)
        assert Image.open(out / "images" / f"{stem}.png").size == (16, 16)
    assert not (out / "images" / "not-listed.png").exists()
    metrics = out / "metrics.parquet"
    import duckdb
    import polars as pl

    df = pd.read_parquet(metrics)
    assert sorted(df["key"]) == keys and (df["status"] == "ok").all() and (df["samples"] == 2).all()
    assert pl.read_parquet(metrics).height == 4
    rows = duckdb.sql(f"select count(*), count(*) filter (where status = 'ok') from '{metrics}'").fetchall()
    assert [tuple(int(v) for v in r) for r in rows] == [(4, 4)]


def test_restore_mode_from_low_res(tmp_path, ray_local):
    src = tmp_path / "lowres"
    for i in range(3):
        save_png(src / f"lr{i}.png", 4, i)
    out = tmp_path / "out"
    code = main(["run", "--input", str(src), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=4",
                 *TINY, "--mode", "restore", "--workers", "1", "--gpus-per-worker", "1"])
    assert code == 0
    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 3 and (df["status"] == "ok").all()
    assert df["psnr"].isna().all() and df["consistency"].notna().all()
    assert (df["in_height"] == 4).all() and (df["out_height"] == 16).all()
    img = Image.open(io.BytesIO((out / "images" / "lr0.png").read_bytes()))
    assert img.size == (16, 16)


def test_inpaint_with_a_mask_per_image(tmp_path, ray_local):
    src = tmp_path / "photos"
    for i in range(3):
        save_png(src / f"m{i}.png", 16, i)
    masks = src / "masks"  # under the input folder: not taken as inputs
    for i in range(2):  # m2.png has no mask
        mask = np.full((16, 16), 255, np.uint8)
        mask[4 + i: 10, 3:12] = 0
        masks.mkdir(exist_ok=True)
        Image.fromarray(mask).save(masks / f"m{i}.png")
    out = tmp_path / "out"
    code = main(["run", "--input", str(src), "--output", str(out), "--task", "inpaint", "--set",
                 f"mask={masks}", *TINY, "--workers", "1", "--gpus-per-worker", "1"])
    assert code == 3
    df = pd.read_parquet(out / "metrics.parquet").set_index("key")
    assert sorted(df.index) == ["m0.png", "m1.png", "m2.png"]
    assert (df.loc[["m0.png", "m1.png"], "status"] == "ok").all()
    assert df.loc["m2.png", "status"] == "failed" and "no mask found" in df.loc["m2.png", "error"]
    restored = np.asarray(Image.open(out / "images" / "m0.png"), np.int16)
    original = np.asarray(Image.open(src / "m0.png"), np.int16)
    kept = np.asarray(Image.open(masks / "m0.png")) > 127
    assert np.abs(restored - original)[kept].max() <= 1  # known pixels kept (DDNM: A x0 = y)


def test_dry_run_prints_plan_and_runs_nothing(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(5):
        save_png(src / f"p{i}.png", 16, i)
    out = tmp_path / "out"
    code = main(["run", "--input", str(src), "--output", str(out), "--task", "sr_avgpool", *TINY,
                 "--steps", "10", "--travel", "2,2,2", "--shard-size", "2", "--workers", "3", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "images:     5 in 3 shards" in text and "workers:    3" in text
    assert "model calls per image: " in text and "runs 3 shards (5 images)" in text


def test_progress_plain_lines(tmp_path):
    stream = io.StringIO()
    p = Progress(10, done=2, stream=stream, interval=0.0, tty=False)
    p.update(3, 1)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[ddnm-batch] 6/10 images (1 failed)") and "img/s" in lines[0]
    assert "ETA" in lines[-1]


def test_retry_failed_reruns_only_the_failed_image(tmp_path, ray_local):
    """A corrupt input fails (exit 3); once it is replaced, --retry-failed restores it alone."""
    import json

    src = tmp_path / "photos"
    for i in range(5):
        save_png(src / f"p{i}.png", 16, i)
    (src / "p2.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["run", "--input", str(src), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=4",
            *TINY, "--workers", "1", "--gpus-per-worker", "1", "--shard-size", "2"]
    assert main(argv) == 3
    first = pd.read_parquet(out / "metrics.parquet").set_index("key")
    assert first.loc["p2.png", "status"] == "failed" and "p2.png" in first.loc["p2.png", "error"]
    assert main(argv) == 3  # a plain rerun leaves the failure alone
    assert json.loads((out / "_manifest.json").read_text())["run"]["images"] == 0
    save_png(src / "p2.png", 16, 2)
    assert main([*argv, "--retry-failed"]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["run"]["images"] == 1 and manifest["run"]["retried_keys"] == 1
    counts = manifest["counts"]
    assert (counts["images"], counts["ok"], counts["failed"], counts["planned_images"]) == (5, 5, 0, 5)
    df = pd.read_parquet(out / "metrics.parquet")
    assert sorted(df["key"]) == [f"p{i}.png" for i in range(5)] and (df["status"] == "ok").all()
    assert (out / "images" / "p2.png").is_file()
    kept = df.set_index("key").drop(index="p2.png")
    assert (kept["shard_id"] == first.drop(index="p2.png")["shard_id"]).all()  # not run again
