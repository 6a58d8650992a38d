"""The `ddnm-batch` command: the console entry point, tasks/models listings, status/report errors,
a job file with flag overrides, and `demo` on the bundled assets."""

from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize("command", ["status", "report"])
@pytest.mark.parametrize("folder", ["none", "empty"])
def test_status_and_report_of_nothing_are_an_error(tmp_path, capsys, command, folder):
    (tmp_path / "empty").mkdir()
    assert main([command, str(tmp_path / folder)]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / folder}: no job here" in captured.err and captured.out == ""


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


def _committed_job(out: Path, shards: int = 20) -> None:
    """A finished job's output as `status` and `report` read it (_plan.json, one Parquet file per
    shard, metrics.parquet, _manifest.json), written without Ray: one ok row per shard."""
    from cluster import storage
    from cluster.rows import new_row
    from jobs import results
    from jobs.layout import PLAN_FILE

    plan = [{"shard_id": i, "keys": [f"{i}.png"]} for i in range(shards)]
    for s in plan:
        row = dict(new_row(s["keys"][0], task="sr_bicubic", mode="evaluate", steps=2, samples=1, seed=0,
                           worker="w", node="n", shard_id=s["shard_id"], attempt=0),
                   status="ok", psnr=20.0, ssim=0.5,
                   consistency=1e-6, consistency_clamped=1.0, in_height=16, in_width=16, out_height=16,
                   out_width=16, model_calls=2, seconds=0.1, output=str(out / "images" / s["keys"][0]))
        summary = {**s, "attempt": 0, "seconds": 1.0, "busy_seconds": 0.5, "rows": [row]}
        results.commit_shard(str(out), summary, {})
    storage.write_json(str(out / PLAN_FILE), {"input": "x", "input_root": "x", "shards": plan}, {})
    results.finalize(str(out), {}, spec_hash="x", plan_shards=plan, run={})


def _exit_codes(out: Path, command: str, runs: int) -> list[int]:
    """Exit codes of `runs` processes, two at a time, each doing `status`/`report` OUT as the CLI does.

    Each runs `jobs.cli.main([command, OUT])` in a fresh interpreter and exits with its code through
    the normal interpreter shutdown, as `python -m jobs.cli` does (the abort came at that shutdown)."""
    from concurrent.futures import ThreadPoolExecutor

    code = f"import sys; from jobs.cli import main; sys.exit(main([{command!r}, {str(out)!r}]))"

    def once(_):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
        return res.returncode

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(once, range(runs)))


def test_status_and_report_exit_0_every_run(tmp_path):
    """pyarrow used to drop its last references to Python objects (the BytesIO it read a shard from)
    on its own threads after read_table returned; at interpreter shutdown that aborts the process
    (exit 134, "terminate called without an active exception"), often after torch was imported."""
    out = tmp_path / "out"
    _committed_job(out)
    assert _exit_codes(out, "status", 6) == [0] * 6  # before: 2 to 4 of 6 aborted
    assert _exit_codes(out, "report", 2) == [0] * 2


@pytest.mark.slow
def test_status_exits_0_fifty_runs_in_a_row(tmp_path):
    """The same, 50 times (about 3 minutes on two busy cores)."""
    out = tmp_path / "out"
    _committed_job(out)
    assert _exit_codes(out, "status", 50) == [0] * 50


def test_a_normal_run_prints_only_its_own_lines(tmp_path):
    """No "Token authentication is enabled for this Ray cluster..." line from Ray (or any other)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(src / f"{i}.png")
    res = cli("run", "--mode", "evaluate",
              "--input", str(src), "--output", str(tmp_path / "out"), "--task", "sr_avgpool", "--set",
              "scale=2", "--model", "tiny", "--checkpoint", "random", "--steps", "2", "--workers", "1",
              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines and all(ln.startswith("[ddnm-batch] ") for ln in lines), lines


def _subparser(name: str):
    from jobs.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", ["run", "demo"])
def test_help_gives_every_flag_a_line_with_its_default(command):
    from jobs.spec import JobSpec

    parser = _subparser(command)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and ("(default: " in action.help or "(required, " in action.help), action.dest
    text = parser.format_help()
    if command == "run":  # the defaults are JobSpec's, not copies
        for flag in ("mode", "steps", "eta", "shard-size", "seed", "travel", "model"):
            default = JobSpec.model_fields[flag.replace("-", "_")].default
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            help_ = next(a.help for a in parser._actions if f"--{flag}" in a.option_strings)
            assert help_.endswith(f"(default: {shown})"), (flag, help_)
        for flag in ("workers", "batch-size"):
            assert "(default: " in next(a.help for a in parser._actions if f"--{flag}" in a.option_strings)
        examples = text.rstrip().splitlines()[-3:]
        assert all(line.strip().startswith("ddnm-batch run ") for line in examples), examples
    else:
        assert "Restore the bundled sample photos" in text


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args[:200])
    return found


def test_sigterm_stops_like_ctrl_c(tmp_path):
    """SIGTERM mid-run: the message, exit 143, the committed shards intact, no Ray process left (Ray's
    driver used to take the signal: a stack dump and exit 134)."""
    import shutil
    import signal
    import tempfile
    import time

    from jobs import results

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(src / f"{i:02d}.png")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_TMPDIR": ray_tmp}
    argv = ["run", "--mode", "evaluate",
            "--input", str(src), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=2",
            "--model", "tiny", "--checkpoint", "random", "--steps", "300", "--shard-size", "1",
            "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "shards").glob("*.parquet"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        committed = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "ddnm-batch: terminated (SIGTERM); committed shards are kept, run again to resume" in err
        assert "SIGTERM received" not in err, err
        assert len(committed) >= 2
        for name, data in committed.items():  # each one still there, unchanged, its rows ok
            path = out / "shards" / name
            assert path.read_bytes() == data
            assert results.counts(results.read_table(str(path), {}))["ok"] == 1
        left = _processes_mentioning(ray_tmp)
        for _ in range(50):
            if not left:
                break
            time.sleep(0.2)
            left = _processes_mentioning(ray_tmp)
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
