"""Side-by-side tests against the solvers' public implementations (issue 18), run from checkouts.

The public code is never copied into this repository and cannot be downloaded in CI, so these tests
are deselected by default (marker ``public_code``) and run by hand::

    DDNM_PUBLIC_CODE=/path/to/checkouts .venv/bin/python -m pytest tests/public -m public_code

``DDNM_PUBLIC_CODE`` is a folder holding one plain checkout per repository, named ``owner+name`` or
``name`` (``bahjat-kawar+ddrm`` or ``ddrm``; the repositories are listed in :data:`REPOS`). A test
whose checkout is missing skips and names it.

Several of these repositories ship a top-level package of the same name (``guided_diffusion``,
``utils``): :func:`load` imports a module of one checkout with only that checkout on ``sys.path`` and
removes the top-level modules it brought from ``sys.modules`` again, so the next checkout imports
its own. The functions loaded keep their module globals and run unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import pytest

# name used in the tests -> the GitHub repository (owner/name) whose code it runs
REPOS = {
    "ddrm": "bahjat-kawar/ddrm",
    "dps": "DPS2022/diffusion-posterior-sampling",
    "diffpir": "yuanzhi-zhu/DiffPIR",
    "reddiff": "NVlabs/RED-diff",  # RED-diff and its PiGDM (algos/pgdm.py)
    "daps": "zhangbingliang2019/DAPS",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every test here is ``public_code`` (deselected by default, pyproject.toml)."""
    for item in items:
        if "tests/public/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.public_code)


def checkout(key: str) -> Path:
    """The checkout of ``REPOS[key]`` under $DDNM_PUBLIC_CODE, or a skip naming what is missing."""
    root = os.environ.get("DDNM_PUBLIC_CODE")
    repo = REPOS[key]
    if not root:
        pytest.skip(f"set DDNM_PUBLIC_CODE to a folder with a checkout of {repo}")
    owner, name = repo.split("/")
    for cand in (Path(root) / f"{owner}+{name}", Path(root) / name):
        if cand.is_dir():
            return cand
    pytest.skip(f"no checkout of {repo} under {root} (as {owner}+{name} or {name})")


@contextlib.contextmanager
def _only_on_path(path: Path):
    before_path, before_mods = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path[:] = before_path
        own = {p.stem for p in path.iterdir() if p.is_dir() or p.suffix == ".py"}
        for mod in set(sys.modules) - before_mods:
            if mod.split(".")[0] in own:  # packages without __init__.py have no __file__
                del sys.modules[mod]


def load(key: str, module: str):
    """``import module`` from the checkout of ``REPOS[key]`` (module docs); returns the module."""
    root = checkout(key)
    with _only_on_path(root):
        return importlib.import_module(module)
