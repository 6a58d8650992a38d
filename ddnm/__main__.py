"""``python -m ddnm tasks|models|solvers [--json]``: what this install offers."""

from __future__ import annotations

import argparse
import json
import sys


def _tasks() -> list[dict]:
    from ddnm.operators.registry import tasks_json

    return tasks_json()


def _models() -> list[dict]:
    from ddnm.models import list_models

    return list_models()


def _solvers() -> list[dict]:
    from ddnm.solvers import solvers_json

    return solvers_json()


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddnm", description=__doc__)
    parser.add_argument("what", choices=["tasks", "models", "solvers"],
                        help="list the tasks, the models or the solvers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = {"tasks": _tasks, "models": _models, "solvers": _solvers}[args.what]()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.what == "solvers":
        for r in rows:
            r["settings"] = ", ".join(f"{k}={v['default']}" for k, v in r["settings"].items()) or "-"
            r["needs"] = ", ".join(r["needs"]) or "-"
        print(_table(rows, ["name", "paper_steps", "needs", "grad", "memory", "travel", "settings",
                            "description"]))
    elif args.what == "tasks":
        for r in rows:
            r["settings"] = ", ".join(f"{k}={v['default']}" for k, v in r["settings"].items())
        print(_table(rows, ["name", "has_svd", "restore_from_image", "settings", "description"]))
    else:
        print(_table(rows, ["name", "family", "params", "image_size", "accepts", "description"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
