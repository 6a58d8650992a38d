"""Where a job's files live under its output URL (names only; no reads or writes here).

  _spec.json     the resolved spec, its hash, code version, checkpoint hash (written before work)
  _plan.json     the shards {shard_id, keys} (a resumed job reuses it instead of listing again)
  shards/shard-<id:06d>.parquet   one per committed shard, written in one write
  features/shard-<id:06d>.npz     its Inception features (with inception_weights), written just before it
  metrics.parquet, _manifest.json the final table, and the manifest written last
  images/, panels/, std/          the worker's outputs (cluster/outputs.py)
  report.html, report/            `ddnm-batch report --html`: the page and its thumbnails
A shard is committed when its Parquet file exists (and parses: a resumed run redoes one that does not,
jobs/state.py).
"""

from __future__ import annotations

import re
from typing import Any

from cluster import storage

PLAN_FILE = "_plan.json"
SPEC_FILE = "_spec.json"
MANIFEST_FILE = "_manifest.json"
METRICS_FILE = "metrics.parquet"
SHARDS_DIR = "shards"
FEATURES_DIR = "features"
REPORT_FILE = "report.html"
REPORT_DIR = "report"
OUTPUT_DIRS = ("images", "panels", "std", SHARDS_DIR, FEATURES_DIR, REPORT_DIR, REPORT_FILE)
"""What --overwrite removes besides the job files (folders, and the report page)."""
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.parquet$")


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.parquet"


def shard_url(output: str, shard_id: int) -> str:
    return storage.join(output, SHARDS_DIR, shard_name(shard_id))


def features_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.npz"


def features_url(output: str, shard_id: int) -> str:
    return storage.join(output, FEATURES_DIR, features_name(shard_id))


def committed_ids(output: str, options: dict[str, Any]) -> set[int]:
    """Ids of the shards whose Parquet file exists under OUTPUT/shards/."""
    names = storage.list_names(storage.join(output, SHARDS_DIR), options)
    return {int(m.group(1)) for m in map(_SHARD_RE.match, names) if m}
