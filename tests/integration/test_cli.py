"""The `ddnm-batch` command: the console entry point, tasks/models listings, status/report errors,
a job file with flag overrides, and `demo` on the bundled assets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import ASSETS, main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def test_tasks_and_models_json(capsys):
    assert main(["tasks", "--json"]) == 0
    tasks = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert {"sr_bicubic", "colorize", "inpaint", "deblur_gauss", "cs_walsh", "old_photo"} <= set(tasks)
    assert tasks["sr_bicubic"]["settings"]["scale"]["type"] == "int"
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert models["tiny"]["image_size"] == 16 and "adm-256-uncond" in models


def test_job_file_with_overrides_dry_run(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {src}\noutput: {tmp_path / 'out'}\ntask: sr_avgpool\nset:\n  scale: 4\n"
                   "model: tiny\ncheckpoint: random\nsteps: 10\nshard_size: 3\n")
    res = cli("run", str(job), "--steps", "5", "--set", "scale=2", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "images:     4 in 2 shards" in res.stdout and "{'scale': 2}" in res.stdout
    assert "(5 steps" in res.stdout and not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main(["run", str(job), "--steps", "-1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "ddnm-batch: error: steps=-1: Input should be greater than or equal to 1")


def test_status_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "none")]) == 1
    assert "no job here" in capsys.readouterr().err


def _bundled_demo_ready() -> bool:
    samples = ASSETS / "samples"
    if not samples.is_dir() or not any(samples.iterdir()):
        return False
    try:
        import ddnm.models

        ddnm.models.build("small-prior", None)
    except Exception:
        return False
    return True


def test_demo(tmp_path, ray_local, capsys):
    """`ddnm-batch demo` as `make demo` runs it (fewer steps). Until the bundled samples and the small
    prior's weights exist, the same code path runs on generated 16 px images with the tiny model."""
    out = tmp_path / "demo-out"
    if _bundled_demo_ready():
        argv = ["demo", "--output", str(out), "--steps", "5", "--workers", "1"]
    else:
        src = tmp_path / "samples"
        src.mkdir()
        for i in range(3):
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"s{i}.png")
        argv = ["demo", "--output", str(out), "--input", str(src), "--model", "tiny", "--checkpoint",
                "random", "--steps", "2", "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for task in ("sr_bicubic", "colorize", "inpaint"):
        df = pd.read_parquet(out / task / "metrics.parquet")
        assert len(df) >= 1 and (df["status"] == "ok").all() and df["psnr"].notna().all()
        assert len(list((out / task / "images").rglob("*.png"))) == len(df)
        assert task in printed
