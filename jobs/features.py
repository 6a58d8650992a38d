"""Inception features committed with the shards, and FID / KID of the restored set vs the ground truth.

A shard's features go to OUTPUT/features/shard-<id:06d>.npz in one write, *before* its rows' Parquet
(``jobs.results.commit_shard``), so every committed shard has its features and a resumed, incremental
or retried job never computes a feature twice. The driver reads them back at the end and takes each
key once, from the shard whose row won (the latest shard, as in metrics.parquet), and only ok rows.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from cluster import storage
from ddnm.set_metrics import fid, kid
from jobs import layout

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
"""KID's usual settings (torch-fidelity's defaults); the subset size shrinks to the set's size."""


def to_npz_bytes(features: dict[str, Any]) -> bytes:
    """``{"keys": [n], "restored": (n, D), "truth": (n, D)}`` -> npz bytes (float64, no pickles)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        keys=np.asarray(features["keys"], dtype=str),
        restored=np.asarray(features["restored"], np.float64),
        truth=np.asarray(features["truth"], np.float64),
    )
    return buf.getvalue()


def commit(output: str, shard_id: int, features: dict[str, Any], options: dict[str, Any]) -> None:
    storage.write_bytes(layout.features_url(output, shard_id), to_npz_bytes(features), options)


def read(output: str, shard_id: int, options: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A shard's features, or None when it has no file (a job without inception_weights)."""
    try:
        data = storage.read_bytes(layout.features_url(output, shard_id), options)
    except FileNotFoundError:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {"keys": z["keys"], "restored": z["restored"], "truth": z["truth"]}


def collect(
    output: str, options: dict[str, Any], table: pa.Table
) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(keys, restored (n, D), truth (n, D)) of the table's ok rows, each key once from the shard its
    row came from, sorted by key; None when no shard has features."""
    wanted = {
        k: s
        for k, s, st in zip(
            table.column("key").to_pylist(),
            table.column("shard_id").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        )
        if st == "ok"
    }
    present = set(storage.list_names(storage.join(output, layout.FEATURES_DIR), options))  # one listing
    ids = sorted(i for i in set(wanted.values()) if layout.features_name(i) in present)
    with ThreadPoolExecutor(max_workers=16) as pool:
        shards = dict(zip(ids, pool.map(lambda i: read(output, i, options), ids), strict=True))
    if not shards or all(f is None for f in shards.values()):
        return None
    keys, restored, truth = [], [], []
    for sid, f in shards.items():
        if f is None:
            continue
        for j, k in enumerate(f["keys"].tolist()):
            if wanted.get(k) == sid:
                keys.append(k)
                restored.append(f["restored"][j])
                truth.append(f["truth"][j])
    order = np.argsort(keys, kind="stable")
    dim = next(f["restored"].shape[1] for f in shards.values() if f is not None)
    restored = np.asarray(restored).reshape(-1, dim)[order]
    truth = np.asarray(truth).reshape(-1, dim)[order]
    return [keys[i] for i in order], restored, truth


def set_metrics(output: str, options: dict[str, Any], table: pa.Table) -> dict[str, Any] | None:
    """FID and KID (mean, std) of the restored set vs the ground truth over the committed features,
    for the manifest; None without features. Fewer than 2 images: the numbers are None, with why."""
    got = collect(output, options, table)
    if got is None:
        return None
    keys, restored, truth = got
    out: dict[str, Any] = {
        "images": len(keys),
        "fid": None,
        "kid": None,
        "kid_std": None,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": min(KID_SUBSET_SIZE, len(keys)),
        "features": layout.FEATURES_DIR + "/",
    }
    if len(keys) < 2:
        out["note"] = f"FID and KID need at least 2 restored images with features, got {len(keys)}"
        return out
    out["fid"] = fid(restored, truth)
    out["kid"], out["kid_std"] = kid(restored, truth, subsets=KID_SUBSETS, subset_size=out["kid_subset_size"])
    if len(keys) < restored.shape[1]:
        out["note"] = (
            f"{len(keys)} images < {restored.shape[1]} feature dimensions: the covariances are "
            "singular and FID is biased upwards; compare FIDs only at equal set sizes"
        )
    return out
