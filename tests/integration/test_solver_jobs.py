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


BUILT_IN = {"ddnm": [], "ddnm+": [], "ddrm": [], "pigdm": [], "dps": [], "diffpir": [], "reddiff": [],
            "daps": ["--set-solver", "langevin_steps=2", "--set-solver", "ode_steps=2"]}


@pytest.fixture(scope="module")
def solver_runs(tmp_path_factory, s3_server, _ray_session):
    """One job per built-in solver over the same 3 images (noisy 2x SR, the bundled tiny model)."""
    import ray

    from cluster.runtime import init_ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) < 2:
        ray.shutdown()  # as the ray_local fixture: the shared local Ray
    init_ray(num_cpus=2, num_gpus=2)
    root = tmp_path_factory.mktemp("solvers")
    inp = root / "in"
    for i in range(3):
        save_png(inp / f"p{i}.png", 16, i)
    outs, codes = {}, {}
    for name, extra in BUILT_IN.items():
        out = root / name.replace("+", "_plus")
        codes[name] = main(["run", "--input", str(inp), "--output", str(out), "--task", "sr_avgpool", "--set",
                            "scale=2", "--mode", "evaluate", "--sigma-y", "0.05", *TINY, "--solver", name,
                            *extra])
        outs[name] = out
    return root, outs, codes


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_solver_runs_as_a_job_with_every_row_ok(solver_runs, name):
    from ddnm.solvers import get_solver

    _, outs, codes = solver_runs
    assert codes[name] == 0
    df = pd.read_parquet(outs[name] / "metrics.parquet")
    assert sorted(df["key"]) == ["p0.png", "p1.png", "p2.png"] and (df["status"] == "ok").all()
    assert (df["solver"] == name).all()
    settings = json.loads(df["solver_settings"].iloc[0])
    assert set(settings) == set(get_solver(name).settings)
    assert df["psnr"].notna().all() and df["consistency"].notna().all()
    expected = 2 * (2 if name == "daps" else 1)  # steps 2; DAPS calls ode_steps per level
    assert (df["model_calls"] == expected).all()


def test_compare_of_two_solvers_gives_a_page_that_loads_in_chromium(solver_runs, capsys):
    from tests.integration.test_evaluation import _open

    root, outs, _ = solver_runs
    page = root / "compare.html"
    capsys.readouterr()
    assert main(["compare", str(outs["ddnm"]), str(outs["dps"]), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "psnr" in text
    html_text = page.read_text()
    assert "A: DDNM" in html_text and "B: DPS" in html_text
    requests, images, cells = _open(page)
    assert requests and all(u.startswith(root.as_uri()) for u in requests)
    assert images and all(ok and w > 0 for _, ok, w in images), images
    deltas = {k: float(v) for m, k, v, _ in cells if m == "psnr_delta"}
    a = pd.read_parquet(outs["ddnm"] / "metrics.parquet").set_index("key")["psnr"]
    b = pd.read_parquet(outs["dps"] / "metrics.parquet").set_index("key")["psnr"]
    assert deltas and all(abs(deltas[k] - (b[k] - a[k])) < 1e-9 for k in deltas)


def test_an_svd_solver_on_a_custom_operator_is_refused_before_any_work(tmp_path, ray_local, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    save_png(inp / "p0.png", 16, 0)
    code = main(["run", "--input", str(inp), "--output", str(out), "--task",
                 "tests.unit.test_solvers:_NoSVD", "--mode", "evaluate", *TINY, "--solver", "ddrm"])
    err = capsys.readouterr().err
    assert code == 1
    assert "solver ddrm needs an SVD" in err
    assert not (out / "metrics.parquet").exists()
