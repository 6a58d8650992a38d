"""Provenance: the code version and the checkpoint's fingerprint, recorded beside a job's outputs."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

from cluster.checkpoints import is_remote, local_checkpoint, remote_fingerprint
from jobs.errors import JobError
from jobs.spec import JobSpec


def code_version() -> dict[str, Any]:
    """{"package": version, "git": commit or None, "dirty": bool or None} of the running code."""
    try:
        version = importlib.metadata.version("ddnm-batch")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=5, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": version, "git": commit, "dirty": dirty}


def checkpoint_hash(spec: JobSpec) -> str:
    """sha256 of the checkpoint file; 'random'; 'bundled:<model>' (the bundled weights)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        from ddnm.models import model_facts

        try:  # the bundled weights of the small prior
            from ddnm.models.small_prior import WEIGHTS
        except ImportError:
            WEIGHTS = None
        bundled = model_facts(spec.model).default_weights == "bundled"
        if bundled and WEIGHTS is not None and Path(WEIGHTS).is_file():
            from ddnm.models import checkpoint_hash as sha
            return f"sha256:{sha(WEIGHTS)} (bundled)"
        return f"bundled:{spec.model}"
    if ckpt == "random":
        return "random"
    if is_remote(ckpt):  # hashing a 2 GB object on the driver is a download: record its ETag
        try:
            return remote_fingerprint(ckpt, spec.storage_options)
        except Exception as exc:
            return f"unknown ({type(exc).__name__}): {ckpt}"
    path = ckpt.removeprefix("file://")
    if not Path(path).is_file():  # on a remote cluster the driver may not see the workers' path
        return f"unknown (not readable on the driver): {ckpt}"
    from ddnm.models import checkpoint_hash as sha
    return "sha256:" + sha(path)


def weights_hashes(spec: JobSpec) -> dict[str, str]:
    """{"lpips_weights": "sha256:...", "inception_weights": ...} of the perceptual weight files given.

    A URL is fetched into this node's cache (``cluster.checkpoints.local_checkpoint``: the workers on
    this node reuse the copy) and hashed. A missing file is a JobError naming it and where it comes from.
    """
    from ddnm.models import checkpoint_hash as sha
    from ddnm.perceptual import SOURCES

    out = {}
    for name, url, source in (("lpips_weights", spec.lpips_weights, SOURCES[spec.lpips_net]),
                              ("inception_weights", spec.inception_weights, SOURCES["inception"])):
        if not url:
            continue
        try:
            path = local_checkpoint(url, spec.storage_options)
        except FileNotFoundError:
            path = None
        if path is None or not Path(path).is_file():
            raise JobError(f"{name}={url}: not found (download once: {source})")
        out[name] = "sha256:" + sha(path)
    return out
