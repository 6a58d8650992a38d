"""Layering: ddnm/ stays infrastructure-free; cluster/ never imports jobs/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_DDNM = {"ray", "fsspec", "pyarrow", "s3fs", "gcsfs", "yaml", "pandas", "cluster", "jobs"}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names imported anywhere in the file (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def _files(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no python files under {folder}/"
    return files


@pytest.mark.parametrize("path", _files("ddnm"), ids=lambda p: str(p.relative_to(ROOT)))
def test_ddnm_imports_no_infrastructure(path):
    bad = imported_roots(path) & FORBIDDEN_IN_DDNM
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _files("cluster"), ids=lambda p: str(p.relative_to(ROOT)))
def test_cluster_never_imports_jobs(path):
    assert "jobs" not in imported_roots(path), f"{path.relative_to(ROOT)} imports jobs"


def test_the_checker_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import ray.util\n    from yaml import safe_load\n"
                 "    importlib.import_module('pandas.io')\n")
    assert {"ray", "yaml", "pandas"} <= imported_roots(f)
