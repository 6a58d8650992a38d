"""Committed features: each key once from the shard whose row won, ok rows only; FID / KID from them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ddnm.set_metrics import fid, kid
from jobs import features


def _feats(keys, seed):
    rng = np.random.default_rng(seed)
    n = len(keys)
    return {"keys": keys, "restored": rng.normal(size=(n, 8)), "truth": rng.normal(size=(n, 8))}


def test_each_key_once_from_the_winning_shard_and_set_metrics(tmp_path):
    out = str(tmp_path)
    s0, s1, s3 = _feats(["a", "b"], 0), _feats(["c", "d"], 1), _feats(["b", "e"], 3)  # 3 retried b
    for sid, f in ((0, s0), (1, s1), (3, s3)):
        features.commit(out, sid, f, {})
    # the deduped table: b's row comes from shard 3; e failed there (no features); d failed in shard 1
    table = pa.table({"key": ["a", "b", "c", "d", "e"], "shard_id": [0, 3, 1, 1, 3],
                      "status": ["ok", "ok", "ok", "failed", "failed"]})
    keys, restored, truth = features.collect(out, {}, table)
    assert keys == ["a", "b", "c"]
    want = np.stack([s0["restored"][0], s3["restored"][0], s1["restored"][0]])
    np.testing.assert_array_equal(restored, want)
    np.testing.assert_array_equal(truth[1], s3["truth"][0])
    sm = features.set_metrics(out, {}, table)
    assert sm["images"] == 3 and sm["fid"] == pytest.approx(fid(restored, truth), rel=1e-12)
    assert (sm["kid"], sm["kid_std"]) == kid(restored, truth, subsets=100, subset_size=3)
    assert "singular" in sm["note"]


def test_no_features_no_set_metrics_and_too_few_images(tmp_path):
    table = pa.table({"key": ["a"], "shard_id": [0], "status": ["ok"]})
    assert features.set_metrics(str(tmp_path), {}, table) is None
    features.commit(str(tmp_path), 0, _feats(["a"], 0), {})
    sm = features.set_metrics(str(tmp_path), {}, table)
    assert sm["fid"] is None and "at least 2" in sm["note"]
