"""Checkpoints on object storage: fetched once per node into a local cache, then loaded from disk.

``--checkpoint s3://bucket/256x256_diffusion_uncond.pt`` works like a local path: the first worker on a
node downloads the object (to a temporary file, then ``os.replace``), the others on that node wait on a
file lock and reuse it. A cached copy is reused while its size matches the object's. ``ddnm/`` only
ever sees a local path.

Cache folder: ``$DDNM_CACHE`` or ``~/.cache/ddnm-batch``, under ``checkpoints/<sha256(url)[:16]>/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from cluster import storage


def is_remote(url: str | None) -> bool:
    """True for a URL with a scheme other than ``file://`` (s3://, gs://, https://, ...)."""
    return bool(url) and "://" in url and not url.startswith("file://")


def cache_dir() -> Path:
    return Path(os.environ.get("DDNM_CACHE") or Path.home() / ".cache" / "ddnm-batch")


def local_checkpoint(url: str | None, storage_options: dict | None = None) -> str | None:
    """A local path for `url` (downloaded into the node's cache if remote); None / 'random' pass through.

    Raises FileNotFoundError naming the URL if the object does not exist, io.StorageError if the
    storage fails.
    """
    if url is None or url == "random":
        return url
    if not is_remote(url):
        return url.removeprefix("file://")
    fs, path = storage.filesystem(url, storage_options)
    info = storage.with_retries(url, lambda: fs.info(path), fs=fs)
    if info.get("type") == "directory":
        raise FileNotFoundError(f"checkpoint {url}: is a folder, not a file")
    size = int(info.get("size") or 0)
    folder = cache_dir() / "checkpoints" / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / os.path.basename(path.rstrip("/"))
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait, then reuse it
        try:
            if not (target.is_file() and target.stat().st_size == size):
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
                os.close(fd)
                try:
                    storage.with_retries(url, lambda: fs.get_file(path, tmp), fs=fs)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(target)


def remote_fingerprint(url: str, storage_options: dict | None = None) -> str:
    """What identifies a remote checkpoint without downloading it: its ETag / checksum and size."""
    fs, path = storage.filesystem(url, storage_options)
    info = storage.with_retries(url, lambda: fs.info(path), fs=fs)
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("crc32c") or "?"
    return f"{url} etag={str(tag).strip(chr(34))} size={info.get('size')}"
