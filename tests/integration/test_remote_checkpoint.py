"""A checkpoint on object storage (moto S3): fetched once per node into the cache, then loaded.

The job's spec records the object's ETag and size instead of hashing it on the driver.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from cluster.checkpoints import local_checkpoint, remote_fingerprint
from jobs.cli import main

pytestmark = pytest.mark.integration

BUCKET = "ckpt-it"


@pytest.fixture(scope="module")
def s3_ckpt(s3_server, tmp_path_factory):
    """The tiny model's weights (seeded, not random at load time) as s3://ckpt-it/tiny.safetensors."""
    import s3fs
    from safetensors.torch import save_file

    import ddnm.models

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    model = ddnm.models.build("tiny", "random", seed=3)
    state = {k: v.contiguous() for k, v in model.net.state_dict().items()}
    local = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(state, str(local))
    fs.put(str(local), f"{BUCKET}/tiny.safetensors")
    return f"s3://{BUCKET}/tiny.safetensors", state


def test_fetched_once_and_reused(s3_ckpt, tmp_path, monkeypatch):
    url, state = s3_ckpt
    monkeypatch.setenv("DDNM_CACHE", str(tmp_path))
    path = local_checkpoint(url)
    assert path.startswith(str(tmp_path)) and path.endswith("tiny.safetensors")
    first = os.stat(path).st_mtime_ns
    assert local_checkpoint(url) == path and os.stat(path).st_mtime_ns == first  # no second download

    import ddnm.models

    loaded = ddnm.models.build("tiny", path)
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert "etag=" in remote_fingerprint(url) and "size=" in remote_fingerprint(url)


def test_missing_object_is_named(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("DDNM_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        local_checkpoint(f"s3://{BUCKET}/nope.pt")


def test_job_with_an_s3_checkpoint(s3_ckpt, ray_local, tmp_path, capsys):
    from PIL import Image

    url, _ = s3_ckpt
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(inp / f"im{i}.png")
    out = tmp_path / "out"
    base = ["run", "--mode", "evaluate",
            "--input", str(inp), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=4",
            "--model", "tiny", "--steps", "2", "--workers", "1"]
    assert main(base + ["--checkpoint", url]) == 0
    table = pd.read_parquet(out / "metrics.parquet")
    assert sorted(table.key) == ["im0.png", "im1.png"] and (table.status == "ok").all()
    spec = json.loads((out / "_spec.json").read_text())
    assert "etag=" in json.dumps(spec)

    assert main(base + ["--checkpoint", f"s3://{BUCKET}/missing.pt", "--overwrite"]) == 1
    assert "missing.pt: not found" in capsys.readouterr().err
