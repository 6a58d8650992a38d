"""One summary per task and solver of a run's per-image table: what ``report`` prints and what
``report --html`` and ``compare`` show (one function, so the text and the page never disagree)."""

from __future__ import annotations

from typing import Any

import pandas as pd

METRICS = ("psnr", "ssim", "lpips", "consistency")
"""Per-image metrics summarised (mean, median and count over ok rows)."""


def run_solver(spec_file: dict[str, Any] | None) -> str | None:
    """The solver a run's ``_spec.json`` names: ``result_fields.solver``, else the default for its noise
    (an output written before the solver registry, or one that named none)."""
    from ddnm.solvers import default_solver

    fields = (spec_file or {}).get("result_fields") or {}
    if not fields and not (spec_file or {}).get("spec"):
        return None
    sigma = fields.get("sigma_y", ((spec_file or {}).get("spec") or {}).get("sigma_y")) or 0.0
    return fields.get("solver") or default_solver(sigma)


def task_summary(df: pd.DataFrame, manifest: dict | None, *,
                 solver: str | None = None) -> list[dict[str, Any]]:
    """One dict per (task, solver): count, ok, failed, images/s (the run's), images/s per worker (from
    the shards' wall time), model calls per image (x samples), and per metric of :data:`METRICS` its
    mean, median and count over ok rows (``psnr_mean``, ``psnr_median``, ``psnr_n``, ...).

    solver: the run's solver, for rows written before the ``solver`` column existed (null there).
    """
    run = (manifest or {}).get("run", {})
    df = df.copy()
    if "solver" not in df:
        df["solver"] = None
    df["solver"] = df["solver"].astype(object).where(df["solver"].notna(), solver or "-")
    out = []
    for (task, name), g in df.groupby(["task", "solver"], dropna=False, sort=True):
        ok = g[g["status"] == "ok"]
        shard_secs = g.drop_duplicates(["shard_id", "attempt"])["shard_seconds"].sum()
        row = {
            "task": task,
            "solver": name,
            "count": len(g),
            "ok": len(ok),
            "failed": len(g) - len(ok),
            "img_per_s": run.get("images_per_second"),
            "img_per_s_worker": len(g) / shard_secs if shard_secs else None,
            "model_calls": float((ok["model_calls"] * ok["samples"]).mean()) if len(ok) else None,
        }
        for m in METRICS:
            vals = ok[m].dropna() if m in ok else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else None
            row[f"{m}_median"] = float(vals.median()) if len(vals) else None
            row[f"{m}_n"] = len(vals)
        out.append(row)
    return out
