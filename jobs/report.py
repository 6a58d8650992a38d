"""`status`, `report`, `tasks`, `models` and `solvers`: reading a job's output back, listing the
registries."""

from __future__ import annotations

import json
import sys
from typing import Any

from cluster import storage
from jobs import layout, lease, results
from jobs.errors import EXIT_FAILED_IMAGES, EXIT_OK, JobError
from jobs.summary import run_solver, task_summary


def read_state(output: str, name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """One of the job's JSON files (None when absent); JobError naming it when it does not parse (a
    crash or a full disk can truncate it): a rerun of the job repairs it (jobs/state.py)."""
    from jobs.state import read_json

    url = storage.join(output, name)
    doc, why = read_json(url, options)
    if why:
        raise JobError(f"{url}: {why}; run the job again with the same spec to repair it")
    return doc


def read_plan(output: str, options: dict[str, Any]) -> dict[str, Any]:
    """The job's _plan.json; JobError "no job here" when `output` holds no job (status and report)."""
    plan = read_state(output, layout.PLAN_FILE, options)
    if plan is None:
        raise JobError(f"{output}: no job here (no {layout.PLAN_FILE})")
    return plan


def job_status(output: str, options: dict[str, Any]) -> dict[str, Any]:
    """Counts of a job's output: shards done/failed/pending, images ok/failed/pending."""
    plan = read_plan(output, options)
    shards = {s["shard_id"]: len(s["keys"]) for s in plan["shards"]}
    committed = layout.committed_ids(output, options) & set(shards)
    table = results.read_committed(output, options, committed)
    failed_shards = set(r for r, s in zip(table.column("shard_id").to_pylist(),
                                          table.column("status").to_pylist(), strict=True) if s != "ok")
    c = results.counts(table)
    manifest = read_state(output, layout.MANIFEST_FILE, options)
    return {
        "output": output,
        "shards": {"total": len(shards), "done": len(committed - failed_shards),
                   "failed": len(failed_shards), "pending": len(set(shards) - committed)},
        "images": {"total": sum(shards.values()), "ok": c["ok"], "failed": c["failed"],
                   "pending": sum(n for i, n in shards.items() if i not in committed)},
        "complete": manifest is not None and not (set(shards) - committed),
        "spec_hash": plan.get("spec_hash"),
        "lease": lease.read(output, options),
    }


def status(output: str, options: dict[str, Any], *, as_json: bool = False) -> int:
    st = job_status(output, options)
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        s, i = st["shards"], st["images"]
        print(f"{output}: {'complete' if st['complete'] else 'incomplete'}")
        print(f"  shards: {s['done']} done, {s['failed']} with failed images, {s['pending']} pending "
              f"(of {s['total']})")
        print(f"  images: {i['ok']} ok, {i['failed']} failed, {i['pending']} pending (of {i['total']})")
        if st["lease"]:
            print(f"  held by: {lease.describe(st['lease'])}")
    return EXIT_FAILED_IMAGES if st["images"]["failed"] else EXIT_OK


def _table(output: str, options: dict[str, Any]):
    read_plan(output, options)
    url = storage.join(output, layout.METRICS_FILE)
    manifest = read_state(output, layout.MANIFEST_FILE, options)
    if manifest is not None:
        return results.read_table(url, options), manifest
    return results.read_committed(output, options), None


def summarize(output: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per task and solver (``jobs.summary.task_summary``), with the output's URL."""
    table, manifest = _table(output, options)
    spec_file = storage.read_json(storage.join(output, layout.SPEC_FILE), options)
    rows = task_summary(table.to_pandas(), manifest, solver=run_solver(spec_file))
    return [{"output": output, **r} for r in rows]


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def print_rows(rows: list[dict[str, Any]], stream=None) -> None:
    stream = stream or sys.stdout
    head = f"{'task':<14} {'solver':<8} {'count':>6} {'ok':>5} {'failed':>6} {'PSNR':>7} {'SSIM':>6} " \
           f"{'consist.':>9} " \
           f"{'img/s':>7} {'img/s/wkr':>9}  output"
    print(head, file=stream)
    print("-" * len(head), file=stream)
    for r in rows:
        print(f"{str(r['task']):<14} {str(r['solver']):<8} {r['count']:>6} {r['ok']:>5} {r['failed']:>6} "
              f"{_fmt(r['psnr_mean'], 2):>7} {_fmt(r['ssim_mean']):>6} {_fmt(r['consistency_mean'], 4):>9} "
              f"{_fmt(r['img_per_s'], 2):>7} "
              f"{_fmt(r['img_per_s_worker'], 2):>9}  {r['output']}", file=stream)


def report(output: str, options: dict[str, Any]) -> int:
    rows = summarize(output, options)
    print_rows(rows)
    return EXIT_FAILED_IMAGES if any(r["failed"] for r in rows) else EXIT_OK


def report_many(outputs: list[str], options: dict[str, Any]) -> None:
    rows = []
    for out in outputs:
        try:
            rows += summarize(out, options)
        except (JobError, FileNotFoundError):
            continue
    print_rows(rows)


def list_registry(kind: str, *, as_json: bool = False) -> int:
    """`tasks` / `models` / `solvers`: delegated to ``python -m ddnm`` (one source for both commands)."""
    from ddnm.__main__ import main as ddnm_main

    return ddnm_main([kind, "--json"] if as_json else [kind])
