"""A job's own files checked on resume, for what a crash, a full disk or a faulty store can leave.

* A shard file that does not parse (truncated, empty) is not a commit: its shard runs again (the file
  is removed first, so `status` and `report` can read the output meanwhile).
* A _plan.json that does not parse is rebuilt: each committed shard keeps its id and its keys (read
  from its rows: every key of a shard has a row, ok or failed), the input's other keys get new shards.
* A _manifest.json that does not parse is written again at the end of the run (as every run does).
Each repair is one line naming the file (`Prepared.repairs`, logged by the driver). The lease's own
file is jobs/lease.py's.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from cluster import storage
from jobs import layout, results


def read_json(url: str, options: dict[str, Any], *, needs: tuple[str, ...] = ()) -> tuple[Any, str | None]:
    """(document, None); (None, None) when there is none; (None, why) when it is not JSON, or not an
    object with the keys `needs`. Storage failures raise (they are not bad contents)."""
    try:
        data = storage.read_bytes(url, options)
    except FileNotFoundError:
        return None, None
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON, truncated? {type(exc).__name__}: {exc}"
    missing = [k for k in needs if not isinstance(doc, dict) or k not in doc]
    return (None, f"no {', '.join(missing)} in it") if missing else (doc, None)


def unreadable_shards(output: str, options: dict[str, Any], ids: set[int]) -> dict[int, str]:
    """Shard id -> why its file does not parse as Parquet, among the committed shards `ids`."""
    def check(shard_id: int) -> tuple[int, str | None]:
        data = storage.read_bytes(layout.shard_url(output, shard_id), options)
        try:
            results.read_parquet_bytes(data)
        except (pa.ArrowException, ValueError, OSError) as exc:  # not storage: the bytes are in memory
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            return shard_id, f"{len(data)} bytes, not Parquet: {first}"
        return shard_id, None

    with ThreadPoolExecutor(max_workers=16) as pool:  # one GET each: latency-bound on object stores
        return {i: why for i, why in pool.map(check, sorted(ids)) if why}


def shards_from_rows(output: str, options: dict[str, Any], ids: set[int]) -> list[dict[str, Any]]:
    """[{"shard_id", "keys"}] of the committed shards `ids`, from their rows (to rebuild a plan)."""
    def keys(shard_id: int) -> dict[str, Any]:
        table = results.read_table(layout.shard_url(output, shard_id), options)
        return {"shard_id": shard_id, "keys": sorted(set(table.column("key").to_pylist()))}

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(keys, sorted(ids)))
