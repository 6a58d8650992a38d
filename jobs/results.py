"""The Parquet schema, per-shard commits, the final metrics table and the manifest.

One row per input image. A shard's rows are written as OUTPUT/shards/shard-<id:06d>.parquet in one
write (Parquet encoded to bytes here, then one PUT through fsspec: pyarrow's own S3 filesystem
ignores AWS_ENDPOINT_URL). The final OUTPUT/metrics.parquet is the concatenation of the committed
shards, each key once (the latest shard wins: a --retry-failed shard replaces the failed rows), and
OUTPUT/_manifest.json is written last, with FID / KID over the committed features (jobs/features.py).
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

from cluster import storage
from cluster.rows import COLUMNS, NAMES
from jobs import features, layout, provenance
from jobs.layout import shard_url

_TYPES = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
SCHEMA = pa.schema([pa.field(c.name, _TYPES[c.type], nullable=not c.required) for c in COLUMNS])
"""The Parquet schema of the per-image table, derived from ``cluster.rows.COLUMNS``."""
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
    """A worker summary (docs/INTERFACES.md) -> a table of SCHEMA, one row per key.

    A row field that is not a column is an error (it would otherwise be dropped silently)."""
    columns: dict[str, list] = {f.name: [] for f in SCHEMA}
    for row in summary.get("rows", []):
        unknown = set(row) - set(NAMES)
        if unknown:
            raise ValueError(f"row of {row.get('key')!r} has fields that are not columns: {sorted(unknown)}")
        for f in SCHEMA:
            columns[f.name].append(_cell(row.get(f.name), f.type))
    return pa.table(columns, schema=SCHEMA)


def to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def commit_shard(output: str, summary: dict[str, Any], options: dict[str, Any]) -> pa.Table:
    """Write the shard's rows in one write under its deterministic name; a retry overwrites.

    Its Inception features (when the summary has them) are written first, so that a committed shard
    always has its features."""
    table = summary_table(summary)
    if summary.get("features") is not None:
        features.commit(output, int(summary["shard_id"]), summary["features"], options)
    storage.write_bytes(shard_url(output, int(summary["shard_id"])), to_parquet_bytes(table), options)
    return table


def read_parquet_bytes(data: bytes) -> pa.Table:
    """A Parquet file's bytes -> a pyarrow Table, read from a copy in Arrow's own memory.

    Not ``pq.read_table(io.BytesIO(data))``: Arrow's thread pools may release their last references
    to a Python file or buffer after read_table has returned, and one released during interpreter
    shutdown takes the GIL on a thread that Python then ends: std::terminate, exit 134 (status and
    report aborted on exit, more often with torch imported, whose teardown widens the window).
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.read_table(pa.BufferReader(sink.getvalue()))


def read_table(url: str, options: dict[str, Any]) -> pa.Table:
    return conform(read_parquet_bytes(storage.read_bytes(url, options)))


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`SCHEMA`: columns a shard written by an earlier release lacks (canvas, lpips,
    solver, ...) become nulls, so its rows stay valid beside new ones; unknown columns are dropped."""
    n = table.num_rows
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type)
               for f in SCHEMA]
    return pa.Table.from_arrays(columns, names=SCHEMA.names).cast(SCHEMA)


def read_committed(output: str, options: dict[str, Any], shard_ids: set[int] | None = None) -> pa.Table:
    """The committed shards' rows, each key once (the latest shard, then the latest attempt, wins)."""
    ids = sorted(layout.committed_ids(output, options) if shard_ids is None else shard_ids)
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
    committed = layout.committed_ids(output, options)
    table = read_committed(output, options, committed)
    metrics_url = storage.join(output, layout.METRICS_FILE)
    storage.write_bytes(metrics_url, to_parquet_bytes(table), options)
    planned = {s["shard_id"] for s in plan_shards}
    manifest = {
        "spec_hash": spec_hash,
        "code_version": provenance.code_version(),
        "counts": {**counts(table), "planned_images": len({k for s in plan_shards for k in s["keys"]}),
                   "shards": len(planned), "shards_committed": len(committed & planned),
                   "shards_pending": len(planned - committed)},
        "files": {"metrics": layout.METRICS_FILE,
                  "shards": [f"{layout.SHARDS_DIR}/{layout.shard_name(i)}" for i in sorted(committed)]},
        "run": run,
        "set_metrics": features.set_metrics(output, options, table),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
    }
    storage.write_json(storage.join(output, layout.MANIFEST_FILE), manifest, options)
    return table, manifest
