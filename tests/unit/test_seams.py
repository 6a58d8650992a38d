"""The seams between the layers: flags, job-file fields and the spec agree; the worker's metrics are
columns; the column table is README's table; the import graph has no cycle and flows
jobs -> cluster -> ddnm."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from cluster.rows import COLUMNS, NAMES, Row, fail, new_row
from ddnm.restoration import METRICS
from jobs.cli import RUN_FLAG_FIELDS, build_parser
from jobs.results import SCHEMA, summary_table
from jobs.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"job", "dry_run"}  # the positional job file and --dry-run are not part of the job


def _run_dests() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    run = sub.choices["run"]
    return {a.dest for a in run._actions if a.dest != "help"}


def test_cli_flags_job_file_fields_and_spec_agree(tmp_path):
    fields = set(JobSpec.model_fields)
    dests = _run_dests() - CLI_ONLY
    assert {RUN_FLAG_FIELDS.get(d, d) for d in dests} == fields
    # every field can be given in a job file (dashes or underscores), and the file is validated
    values = {"input": str(tmp_path), "output": str(tmp_path / "o"), "task": "sr_avgpool",
              "settings": {"scale": 2}, "mask_url": None, "mode": "evaluate", "model": "tiny",
              "checkpoint": "random", "dtype": "fp32", "steps": 3, "eta": 0.5, "sigma_y": 0.0,
              "travel": "1,1,1", "samples": 1, "shard_size": 4, "workers": 1, "gpus_per_worker": 0.0,
              "cpus_per_worker": 1.0, "batch_size": 2, "seed": 1, "threads": 1, "max_pixels": 5000000,
              "panels": False,
              "incremental": False, "overwrite": False, "retry_failed": False, "address": None,
              "storage_options": {}, "worker_start_timeout": 60.0, "wait_for_lease": True,
              "lease_ttl": 30.0, "lpips_weights": None, "lpips_net": "vgg",
              "inception_weights": None, "canvas": "tiled", "tile": 16,
              "tile_overlap": 4, "solver": "ddnm", "solver_settings": {}}
    assert set(values) == fields, "update this test's job file when a field is added"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in values.items()}))
    assert JobSpec.build(job).shard_size == 4
    job.write_text(yaml.safe_dump({**values, "stepz": 3}))
    with pytest.raises(ValueError, match="stepz: unknown field"):
        JobSpec.build(job)


def test_worker_metrics_are_columns_and_failed_rows_clear_them():
    assert set(METRICS) | {"model_calls", "output", "out_height", "out_width"} <= set(NAMES)
    assert [f.name for f in SCHEMA] == list(NAMES)
    row = new_row("a.png", task="sr_avgpool", mode="evaluate", steps=3, samples=1, seed=0, worker="w",
                  node="n", shard_id=0, attempt=0)
    row.update(psnr=30.0, ssim=0.9, consistency=0.1, consistency_clamped=0.1, model_calls=3, output="x",
               status="ok", out_height=4, out_width=4)
    fail(row, "boom")
    assert all(row[c.name] is None for c in COLUMNS if c.result) and row["error"] == "a.png: boom"
    with pytest.raises(KeyError, match="fid"):
        row["fid"] = 0.1
    with pytest.raises(ValueError, match="not columns: \\['fid'\\]"):
        summary_table({"rows": [{**dict(Row(key="a", status="ok")), "fid": 0.1}]})


def test_readme_table_lists_the_columns_in_order():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| column | type | meaning |"):].split("\n\n")[0].splitlines()[2:]
    names = [n.strip() for line in table for n in line.split("|")[1].split(",")]
    assert names == list(NAMES)
    types = {c.name: c.type for c in COLUMNS}
    for line in table:
        cells = [c.strip() for c in line.split("|")]
        assert {types[n.strip()] for n in cells[1].split(",")} == {cells[2]}, line


# ------------------------------------------------------------------------------------ import graph
PACKAGES = ("ddnm", "cluster", "jobs")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at module level (imports inside functions are lazy
    and cannot make an import cycle). A module's own ancestor packages are left out: Python runs them
    before the module anyway, whether it names them or not."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            deps |= {n for n in names if n in files and n != mod and not mod.startswith(n + ".")}
        graph[mod] = deps
    return graph


def test_import_graph_has_no_cycle_and_flows_down():
    graph = import_graph()
    assert "jobs.plan" in graph and "ddnm.restoration" in graph
    rank = {"ddnm": 0, "cluster": 1, "jobs": 2}
    for mod, deps in graph.items():
        for dep in deps:
            assert rank[dep.split(".")[0]] <= rank[mod.split(".")[0]], f"{mod} imports {dep}"
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in graph[mod]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [mod, dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    graph = {"jobs.a": {"jobs.b"}, "jobs.b": {"jobs.a"}}
    monkeypatch.setitem(globals(), "import_graph", lambda: graph | {"jobs.plan": set(),
                                                                    "ddnm.restoration": set()})
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_import_graph_has_no_cycle_and_flows_down()


def test_no_module_shadows_the_standard_library_or_a_sibling_package():
    import sys

    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = path.stem
            assert name not in sys.stdlib_module_names or name in ("__init__", "__main__"), path
            assert name not in PACKAGES or path.parent.name == name, path
    assert not re.search(r"cluster/io\.py", " ".join(map(str, (ROOT / "cluster").iterdir())))
