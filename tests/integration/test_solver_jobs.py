"""Solvers in jobs: an output written by an earlier release resumes without --overwrite, and a solver
of one's own (tests/unit/toy_solver.py) runs as a job, recorded per row, with nothing else edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from jobs.cli import main
from tests.integration.test_jobs_local import save_png

pytestmark = pytest.mark.integration

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "release-72c8161"
TINY = ["--model", "tiny", "--steps", "2", "--workers", "1"]


def _old_output(tmp_path: Path) -> tuple[Path, Path]:
    """The fixture moved to tmp_path: its JSON files name /tmp/oldjob, rewritten to the new place."""
    root = tmp_path / "oldjob"
    shutil.copytree(OLD, root, ignore=shutil.ignore_patterns("README.md"))
    for name in ("_spec.json", "_plan.json"):
        f = root / "out" / name
        f.write_text(f.read_text().replace("/tmp/oldjob", str(root)))
    return root / "in", root / "out"


def test_an_output_of_the_release_before_canvas_and_solvers_resumes_without_overwrite(tmp_path, ray_local,
                                                                                     capsys):
    inp, out = _old_output(tmp_path)
    before = (out / "images" / "img0.png").read_bytes()
    code = main(["run", "--input", str(inp), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=2",
                 "--mode", "evaluate", *TINY])
    assert code == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "metrics.parquet")
    assert sorted(df["key"]) == [f"img{i}.png" for i in range(4)] and (df["status"] == "ok").all()
    old, new = df.set_index("key").loc["img0.png"], df.set_index("key").loc["img2.png"]
    assert old["shard_id"] == 0 and pd.isna(old["solver"]) and pd.isna(old["canvas"])  # kept as written
    assert new["solver"] == "ddnm" and new["canvas"] == "whole"  # shard 1 restored by this release
    assert (out / "images" / "img0.png").read_bytes() == before  # shard 0 not redone
    spec = json.loads((out / "_spec.json").read_text())
    assert "canvas" not in spec["result_fields"] and "solver" not in spec["result_fields"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["task", "solver"] and lines[2].split()[:3] == ["sr_avgpool", "ddnm", "4"]


def test_a_changed_result_field_on_an_old_output_is_still_refused(tmp_path, ray_local, capsys):
    inp, out = _old_output(tmp_path)
    code = main(["run", "--input", str(inp), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=2",
                 "--mode", "evaluate", "--canvas", "tiled", *TINY])
    assert code == 1
    assert "canvas: None -> 'tiled'" in capsys.readouterr().err


def test_a_solver_of_ones_own_runs_as_a_job_and_each_row_records_it(tmp_path, ray_local, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save_png(inp / f"p{i}.png", 16, i)
    toy = ["--solver", "tests.unit.toy_solver:TOY", "--set-solver", "blend=0.5"]
    args = ["run", "--input", str(inp), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=2",
            "--mode", "evaluate", *TINY]
    assert main([*args, *toy]) == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 3 and (df["status"] == "ok").all()
    assert (df["solver"] == "toy").all() and (df["model_calls"] == 1).all()
    assert set(df["solver_settings"]) == {'{"blend":0.5,"t":200}'}
    fields = json.loads((out / "_spec.json").read_text())["result_fields"]
    assert fields["solver"] == "tests.unit.toy_solver:TOY" and fields["solver_settings"] == {"blend": 0.5}
    capsys.readouterr()
    assert main([*args, "--solver", "tests.unit.toy_solver:TOY", "--set-solver", "blend=1"]) == 1
    assert "solver_settings: {'blend': 0.5} -> {'blend': 1.0}" in capsys.readouterr().err
    assert main(["solvers", "--json"]) == 0
    names = [s["name"] for s in json.loads(capsys.readouterr().out)]
    assert names[:2] == ["ddnm", "ddnm+"]
