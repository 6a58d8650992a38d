"""Listing, shard plans, resume, incremental runs, spec refusal and the Parquet results, on local
folders and without Ray (shards are "run" by committing fake worker summaries)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs import plan as plan_mod
from jobs import results
from jobs.inputs import list_inputs
from jobs.spec import JobError, JobSpec


def png(path, size=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def inputs(tmp_path):
    root = tmp_path / "in"
    for i in range(7):
        png(root / f"img{i:02d}.png", seed=i)
    png(root / "sub" / "deep" / "X.JPG".replace("JPG", "PNG"), seed=9)  # nested, upper-case extension
    (root / "notes.txt").write_text("not an image")
    return root


def spec_for(inputs, out, **kw):
    base = {"input": str(inputs), "output": str(out), "task": "sr_avgpool", "set": ["scale=4"],
            "mode": "evaluate", "model": "tiny", "checkpoint": "random", "steps": 3, "shard_size": 3}
    return JobSpec.build(**{**base, **kw})


def fake_summary(shard, attempt=0, fail=()):
    rows = [{"key": k, "status": "failed" if k in fail else "ok", "error": f"{k}: bad" if k in fail else None,
             "task": "sr_avgpool", "mode": "evaluate", "psnr": np.float64(20.5), "ssim": 0.5,
             "consistency": 1e-3, "in_height": 16, "in_width": 16, "steps": 3, "model_calls": 3,
             "samples": 1, "seed": 0, "seconds": 0.1, "shard_id": shard["shard_id"], "attempt": attempt,
             "output": f"out/images/{k}", "worker": "w0", "node": "n0", "busy_seconds": 0.9,
             "shard_seconds": 1.0} for k in shard["keys"]]
    return {"shard_id": shard["shard_id"], "attempt": attempt, "worker": "w0", "node": "n0",
            "seconds": 1.0, "busy_seconds": 0.9, "rows": rows}


def run_all(prepared, **kw):
    for shard in prepared.pending:
        results.commit_shard(prepared.spec.output, fake_summary(shard, **kw), {})


def test_make_shards_sorted_and_ids():
    shards = plan_mod.make_shards(["c", "a", "b", "e", "d"], 2, first_id=5)
    assert [s["shard_id"] for s in shards] == [5, 6, 7]
    assert [s["keys"] for s in shards] == [["a", "b"], ["c", "d"], ["e"]]


def test_listing_recursive_relative_and_excludes_output(inputs):
    root, keys = list_inputs(str(inputs), {}, exclude=(str(inputs / "restored"),))
    png(inputs / "restored" / "images" / "img00.png")
    png(inputs / "masks" / "img00.png")
    _, again = list_inputs(str(inputs), {}, exclude=(str(inputs / "restored"), None,
                                                              str(inputs / "masks")))
    assert root == str(inputs)
    assert keys == again == [f"img{i:02d}.png" for i in range(7)] + ["sub/deep/X.PNG"]


def test_listing_missing_folder_names_url(tmp_path):
    with pytest.raises(JobError, match=r"nothere.*not found"):
        list_inputs(str(tmp_path / "nothere"), {})


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifest_keys(inputs, kind):
    keys = ["img03.png", "img01.png", "sub/deep/X.PNG"]
    path = inputs / f"list.{kind}"
    if kind == "txt":
        path.write_text("# my list\n" + "\n".join(keys) + "\n\n")
    elif kind == "csv":
        path.write_text("id,key\n" + "\n".join(f"{i},{k}" for i, k in enumerate(keys)) + "\n")
    else:
        pd.DataFrame({"key": keys}).to_parquet(path)
    root, got = list_inputs(str(path), {})
    assert root == str(inputs) and got == sorted(keys)


def test_manifest_of_absolute_paths(inputs):
    path = inputs / "abs.txt"
    path.write_text(f"{inputs}/img01.png\n{inputs}/sub/deep/X.PNG\n")
    root, got = list_inputs(str(path), {})
    assert root == str(inputs) and got == ["img01.png", "sub/deep/X.PNG"]


def test_prepare_writes_plan_and_spec(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out))
    assert p.total_images == 8 and len(p.shards) == 3 and len(p.pending) == 3 and not p.resumed
    plan = json.loads((out / "_plan.json").read_text())
    assert [s["keys"] for s in plan["shards"]] == [s["keys"] for s in p.shards]
    spec = json.loads((out / "_spec.json").read_text())
    assert spec["spec_hash"] == p.spec.spec_hash() and spec["checkpoint_hash"] == "random"
    assert spec["code_version"]["package"]
    assert p.config.input_url == str(inputs) and p.config.task_settings == {"scale": 4}


def test_dry_run_writes_nothing(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out), dry_run=True)
    text = plan_mod.describe(p, workers=2, model_calls=3)
    assert "8 in 3 shards" in text and "runs 3 shards (8 images)" in text and "workers:    2" in text
    assert not out.exists()


def test_resume_reuses_plan_and_skips_committed(inputs, tmp_path):
    out = tmp_path / "out"
    first = plan_mod.prepare(spec_for(inputs, out))
    results.commit_shard(str(out), fake_summary(first.shards[0]), {})
    png(inputs / "img99.png")  # arrives later: a plain resume does not list again
    again = plan_mod.prepare(spec_for(inputs, out, workers=4))  # workers do not change the job
    assert again.resumed and again.committed == {0}
    assert [s["shard_id"] for s in again.pending] == [1, 2]
    assert again.total_images == 8
    text = plan_mod.describe(again, workers=1, model_calls=3)
    assert "skips 1 committed shards (3 images)" in text


def test_incremental_appends_only_new_keys(inputs, tmp_path):
    out = tmp_path / "out"
    run_all(plan_mod.prepare(spec_for(inputs, out)))
    for i in (50, 51, 52, 53):
        png(inputs / f"new{i}.png", seed=i)
    p = plan_mod.prepare(spec_for(inputs, out, incremental=True))
    assert p.new_keys == 4
    assert [s["shard_id"] for s in p.pending] == [3, 4]
    new = sorted(k for s in p.pending for k in s["keys"])
    assert new == ["new50.png", "new51.png", "new52.png", "new53.png"]
    run_all(p)
    again = plan_mod.prepare(spec_for(inputs, out, incremental=True))
    assert again.new_keys == 0 and again.pending == []


def test_spec_change_refused_naming_field(inputs, tmp_path):
    out = tmp_path / "out"
    plan_mod.prepare(spec_for(inputs, out))
    with pytest.raises(JobError, match=r"different spec.*steps: 3 -> 5.*--overwrite"):
        plan_mod.prepare(spec_for(inputs, out, steps=5))
    with pytest.raises(JobError, match=r"settings: \{'scale': 4\} -> \{'scale': 2\}"):
        plan_mod.prepare(spec_for(inputs, out, set=["scale=2"]))


def test_overwrite_starts_fresh(inputs, tmp_path):
    out = tmp_path / "out"
    run_all(plan_mod.prepare(spec_for(inputs, out)))
    (out / "images").mkdir()
    (out / "images" / "stale.png").write_bytes(b"x")
    p = plan_mod.prepare(spec_for(inputs, out, steps=5, overwrite=True))
    assert len(p.pending) == 3 and not (out / "shards").exists() and not (out / "images").exists()
    assert json.loads((out / "_spec.json").read_text())["result_fields"]["steps"] == 5


def test_scale_larger_than_image_refused_before_writing(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"sr_avgpool.*16x16.*scale"):
        plan_mod.prepare(spec_for(inputs, out, set=["scale=32"]))
    assert not out.exists()
    # a scale that does not divide the sides: evaluate mode modcrops the ground truth (16 -> 15)
    assert plan_mod.prepare(spec_for(inputs, out, set=["scale=3"]), dry_run=True).shards


def test_missing_mask_and_checkpoint_refused(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"mask=.*nomask\.png: not found"):
        plan_mod.prepare(spec_for(inputs, out, task="inpaint", set=[f"mask={tmp_path}/nomask.png"]))
    with pytest.raises(JobError, match=r"--checkpoint .*none\.pt: not found"):
        plan_mod.prepare(spec_for(inputs, out, checkpoint=str(tmp_path / "none.pt")))
    assert not out.exists()


def test_mask_folder_becomes_mask_url(inputs, tmp_path):
    masks = tmp_path / "masks"
    png(masks / "img00.png")
    spec = spec_for(inputs, tmp_path / "out", task="inpaint", set=[f"mask={masks}"])
    p = plan_mod.prepare(spec, dry_run=True)
    assert p.config.mask_url == str(masks) and "mask" not in p.config.task_settings


def test_summary_table_schema_and_single_file(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out))
    table = results.commit_shard(str(out), fake_summary(p.shards[1], fail={p.shards[1]["keys"][0]}), {})
    assert table.schema == results.SCHEMA
    assert sorted(x.name for x in (out / "shards").iterdir()) == ["shard-000001.parquet"]
    df = pd.read_parquet(out / "shards" / "shard-000001.parquet")
    assert list(df["status"]) == ["failed", "ok", "ok"] and df["error"][0].endswith(": bad")
    assert df["worker"].tolist() == ["w0"] * 3 and df["busy_seconds"].tolist() == [0.9] * 3


def test_finalize_keeps_each_key_once_latest_shard_first_and_writes_manifest_last(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out))
    run_all(p, fail=set(p.shards[0]["keys"]))
    # a later shard holding shard 0's keys again (what --retry-failed writes) replaces its rows,
    # whatever the attempts
    later = {"shard_id": 7, "keys": p.shards[0]["keys"]}
    results.commit_shard(str(out), fake_summary(later, attempt=0), {})
    results.commit_shard(str(out), fake_summary(p.shards[0], attempt=2, fail=set(p.shards[0]["keys"])), {})
    table, manifest = results.finalize(str(out), {}, spec_hash=p.spec.spec_hash(),
                                       plan_shards=[*p.shards, later], run={"seconds": 1})
    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 8 and df["key"].is_unique and (df["status"] == "ok").all()
    assert df.set_index("key").loc[p.shards[0]["keys"], "shard_id"].tolist() == [7, 7, 7]
    assert manifest["counts"]["images"] == 8 and manifest["counts"]["planned_images"] == 8
    assert manifest["counts"]["shards_pending"] == 0
    on_disk = json.loads((out / "_manifest.json").read_text())
    assert on_disk["spec_hash"] == p.spec.spec_hash()
    newest_data = max(f.stat().st_mtime_ns for f in [out / "metrics.parquet", *(out / "shards").iterdir()])
    assert (out / "_manifest.json").stat().st_mtime_ns >= newest_data


def test_retry_failed_gives_only_the_failed_keys_new_shards(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out))
    bad = {p.shards[0]["keys"][1], p.shards[2]["keys"][0]}
    run_all(p, fail=bad)
    plain = plan_mod.prepare(spec_for(inputs, out))
    assert plain.pending == [] and plain.retried_keys == 0  # a plain resume leaves failures alone
    retry = plan_mod.prepare(spec_for(inputs, out, retry_failed=True))
    assert retry.retried_keys == 2 and retry.spec.spec_hash() == p.spec.spec_hash()
    assert [s["shard_id"] for s in retry.pending] == [3]
    assert sorted(retry.pending[0]["keys"]) == sorted(bad)
    assert retry.total_images == 8 and retry.pending_images == 2
    assert "(2 failed ones to run again)" in plan_mod.describe(retry, workers=1, model_calls=3)
    assert len(json.loads((out / "_plan.json").read_text())["shards"]) == 4
    # interrupted before the retry shard committed: asking again queues the keys once, not twice
    again = plan_mod.prepare(spec_for(inputs, out, retry_failed=True))
    assert again.retried_keys == 0 and [s["shard_id"] for s in again.pending] == [3]
    run_all(retry)
    table, _ = results.finalize(str(out), {}, spec_hash=p.spec.spec_hash(), plan_shards=retry.shards, run={})
    assert results.counts(table) == {"images": 8, "ok": 8, "failed": 0}
    again = plan_mod.prepare(spec_for(inputs, out, retry_failed=True))
    assert again.retried_keys == 0 and again.pending == []


def test_rerun_with_pending_work_removes_stale_manifest(inputs, tmp_path):
    out = tmp_path / "out"
    p = plan_mod.prepare(spec_for(inputs, out))
    results.commit_shard(str(out), fake_summary(p.shards[0]), {})
    results.finalize(str(out), {}, spec_hash=p.spec.spec_hash(), plan_shards=p.shards, run={})
    assert (out / "_manifest.json").exists()
    plan_mod.prepare(spec_for(inputs, out))
    assert not (out / "_manifest.json").exists()


def test_model_size_mismatch_refused_only_for_a_whole_canvas(tmp_path):
    png(tmp_path / "in" / "big.png", size=32)
    with pytest.raises(JobError, match=r"model tiny restores 16x16 images whole; the input images are 32x32"):
        plan_mod.prepare(spec_for(tmp_path / "in", tmp_path / "out", canvas="whole"), dry_run=True)
    assert plan_mod.prepare(spec_for(tmp_path / "in", tmp_path / "out"), dry_run=True).shards
    with pytest.raises(JobError, match=r"--tile 9: must be a multiple of model tiny's stride 2"):
        plan_mod.prepare(spec_for(tmp_path / "in", tmp_path / "out", tile=9, tile_overlap=2), dry_run=True)
    with pytest.raises(JobError, match=r"--canvas maskshift: task sr_bicubic"):
        plan_mod.prepare(spec_for(tmp_path / "in", tmp_path / "out", canvas="maskshift", task="sr_bicubic"),
                         dry_run=True)


def test_mask_of_wrong_size_refused(inputs, tmp_path):
    png(tmp_path / "m.png", size=8)
    spec = spec_for(inputs, tmp_path / "out", task="inpaint", set=[f"mask={tmp_path}/m.png"])
    with pytest.raises(JobError, match=r"m\.png: size 8x8 does not match the images \(16x16\)"):
        plan_mod.prepare(spec, dry_run=True)
    png(tmp_path / "m16.png", size=16)
    ok = spec_for(inputs, tmp_path / "out", task="inpaint", set=[f"mask={tmp_path}/m16.png"])
    assert plan_mod.prepare(ok, dry_run=True).config.task_settings["mask"].endswith("m16.png")


def test_two_keys_with_one_output_name_refused(tmp_path):
    """Outputs are named by the key (`p.jpg` -> `p.jpg.png`), so only `p.jpg` beside `p.jpg.png` meet."""
    from cluster.outputs import output_name

    assert [output_name(k) for k in ("a/p.png", "a/p.jpg", "a/p.PNG")] == ["a/p.png", "a/p.jpg.png",
                                                                          "a/p.PNG.png"]
    root = tmp_path / "in"
    png(root / "p.jpg")
    png(root / "p.png", seed=1)
    assert len(plan_mod.prepare(spec_for(root, tmp_path / "out"), dry_run=True).shards) == 1
    png(root / "p.jpg.png", seed=2)
    with pytest.raises(JobError, match=r"inputs 'p.jpg' and 'p.jpg.png' would both be restored to "
                                       r"images/p.jpg.png"):
        plan_mod.prepare(spec_for(root, tmp_path / "out"), dry_run=True)


@pytest.mark.parametrize("dry_run", [True, False])
def test_output_that_is_a_file_refused_in_words(inputs, tmp_path, dry_run):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    with pytest.raises(JobError, match=r"^output .*out.txt is a file, not a folder; give a folder"):
        plan_mod.prepare(spec_for(inputs, out), dry_run=dry_run)
    assert out.read_text() == "keep me"


def test_a_small_job_gives_every_worker_a_shard(tmp_path):
    root = tmp_path / "in"
    for i in range(10):
        png(root / f"p{i}.png", seed=i)
    one = plan_mod.prepare(spec_for(root, tmp_path / "a", shard_size=32), dry_run=True)
    assert [len(s["keys"]) for s in one.shards] == [10]
    two = plan_mod.prepare(spec_for(root, tmp_path / "b", shard_size=32), dry_run=True, workers=2)
    assert sorted(len(s["keys"]) for s in two.shards) == [5, 5]
    assert two.budget == one.budget  # what --incremental reuses stays the full shard
