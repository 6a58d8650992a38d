"""The Parquet schema, per-shard commits, the final metrics table and the manifest.

One row per input image. A shard's rows are written as OUTPUT/shards/shard-<id:06d>.parquet in one
write (Parquet encoded to bytes here, then one PUT through fsspec: pyarrow's own S3 filesystem
ignores AWS_ENDPOINT_URL). The final OUTPUT/metrics.parquet is the concatenation of the committed
shards, each key once (the latest shard wins: a --retry-failed shard replaces the failed rows), and
OUTPUT/_manifest.json is written last.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import io as cio
from jobs import plan as plan_mod
from jobs import storage

SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),   # relative key under the input root
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("error", pa.string()),                 # None, or "name: reason"
    pa.field("task", pa.string()),
    pa.field("mode", pa.string()),                  # "evaluate" | "restore"
    pa.field("psnr", pa.float64()),                 # dB vs the input (evaluate mode only)
    pa.field("ssim", pa.float64()),                 # evaluate mode only
    pa.field("consistency", pa.float64()),          # ||A x0 - y||_2 per image, [-1, 1] scale
    pa.field("consistency_clamped", pa.float64()),  # the same after clamping x0 to [-1, 1]
    pa.field("in_height", pa.int64()),
    pa.field("in_width", pa.int64()),
    pa.field("out_height", pa.int64()),
    pa.field("out_width", pa.int64()),
    pa.field("steps", pa.int64()),
    pa.field("model_calls", pa.int64()),            # per sample
    pa.field("samples", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("seconds", pa.float64()),              # this image's share of the sampling time
    pa.field("worker", pa.string()),
    pa.field("node", pa.string()),
    pa.field("shard_id", pa.int64()),
    pa.field("attempt", pa.int64()),
    pa.field("output", pa.string()),                # URL of the restored PNG, or None
    pa.field("busy_seconds", pa.float64()),         # the shard's: time the worker spent computing
    pa.field("shard_seconds", pa.float64()),        # the shard's wall time in the worker
])
_CAST = {pa.string(): str, pa.float64(): float, pa.int64(): int}


def _cell(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if kind == pa.int64() and isinstance(value, float):
        return None if math.isnan(value) else int(value)
    return _CAST[kind](value)


def summary_table(summary: dict[str, Any]) -> pa.Table:
    """A worker summary (docs/INTERFACES.md) -> a table of SCHEMA, one row per key."""
    shard_cols = {"busy_seconds": summary.get("busy_seconds"), "shard_seconds": summary.get("seconds"),
                  "shard_id": summary.get("shard_id"), "attempt": summary.get("attempt")}
    columns: dict[str, list] = {f.name: [] for f in SCHEMA}
    for row in summary.get("rows", []):
        for f in SCHEMA:
            value = row.get(f.name) if f.name not in ("busy_seconds", "shard_seconds") else None
            if value is None and f.name in shard_cols:
                value = shard_cols[f.name]
            if value is None and f.name in ("worker", "node"):
                value = summary.get(f.name)
            columns[f.name].append(_cell(value, f.type))
    return pa.table(columns, schema=SCHEMA)


def to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def shard_url(output: str, shard_id: int) -> str:
    return cio.join(output, plan_mod.SHARDS_DIR, plan_mod.shard_name(shard_id))


def commit_shard(output: str, summary: dict[str, Any], options: dict[str, Any]) -> pa.Table:
    """Write the shard's rows in one write under its deterministic name; a retry overwrites."""
    table = summary_table(summary)
    cio.write_bytes(shard_url(output, int(summary["shard_id"])), to_parquet_bytes(table), options)
    return table


def read_table(url: str, options: dict[str, Any]) -> pa.Table:
    return storage.read_parquet_bytes(cio.read_bytes(url, options)).cast(SCHEMA)


def read_committed(output: str, options: dict[str, Any], shard_ids: set[int] | None = None) -> pa.Table:
    """The committed shards' rows, each key once (the latest shard, then the latest attempt, wins)."""
    ids = sorted(plan_mod.committed_ids(output, options) if shard_ids is None else shard_ids)
    with ThreadPoolExecutor(max_workers=16) as pool:  # one GET each: latency-bound on object stores
        tables = list(pool.map(lambda i: read_table(shard_url(output, i), options), ids))
    if not tables:
        return SCHEMA.empty_table()
    return dedupe(pa.concat_tables(tables))


def dedupe(table: pa.Table) -> pa.Table:
    """Keep one row per key: the highest shard id, then the highest attempt; sorted by key.

    A key sits in two shards only when --retry-failed gave it a new one, which comes later."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("shard_id", "descending"),
                                                      ("attempt", "descending")])
    table = table.take(order)
    keys = table.column("key").to_pylist()
    keep = [i for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return table.take(pa.array(keep, type=pa.int64()))


def counts(table: pa.Table) -> dict[str, int]:
    status = table.column("status").to_pylist()
    return {"images": len(status), "ok": status.count("ok"), "failed": len(status) - status.count("ok")}


def finalize(output: str, options: dict[str, Any], *, spec_hash: str, plan_shards: list[dict],
             run: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    """Write metrics.parquet (every committed shard, each key once), then _manifest.json last."""
    committed = plan_mod.committed_ids(output, options)
    table = read_committed(output, options, committed)
    metrics_url = cio.join(output, plan_mod.METRICS_FILE)
    cio.write_bytes(metrics_url, to_parquet_bytes(table), options)
    planned = {s["shard_id"] for s in plan_shards}
    manifest = {
        "spec_hash": spec_hash,
        "code_version": plan_mod.code_version(),
        "counts": {**counts(table), "planned_images": len({k for s in plan_shards for k in s["keys"]}),
                   "shards": len(planned), "shards_committed": len(committed & planned),
                   "shards_pending": len(planned - committed)},
        "files": {"metrics": plan_mod.METRICS_FILE,
                  "shards": [f"{plan_mod.SHARDS_DIR}/{plan_mod.shard_name(i)}" for i in sorted(committed)]},
        "run": run,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
    }
    storage.write_json(cio.join(output, plan_mod.MANIFEST_FILE), manifest, options)
    return table, manifest
