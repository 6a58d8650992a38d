"""Listing a job's inputs once, on any fsspec URL.

Inputs are a folder/prefix (recursive; the image extensions of ``cluster.images``, any case) or a
manifest file (.txt: one key per line; .csv: a 'key' column or the first column; .parquet: a 'key'
column or the first column). Keys are relative to the input root; a manifest of absolute URLs gets
their common folder as root. Errors name the URL and come before any work (JobError, exit code 1).
"""

from __future__ import annotations

import csv
import io
import posixpath
from typing import Any

from cluster import storage
from cluster.images import IMAGE_EXTENSIONS, is_image_key
from jobs.errors import JobError, storage_failed

MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")


def unreachable(exc: storage.StorageError) -> JobError:
    """A storage failure before any work, as the job's one-line error."""
    return JobError(storage_failed(exc))


def is_manifest(url: str) -> bool:
    return url.lower().endswith(MANIFEST_EXTENSIONS)


def list_inputs(url: str, options: dict[str, Any], *,
                exclude: tuple[str | None, ...] = ()) -> tuple[str, list[str]]:
    """-> (root URL the keys are relative to, sorted unique keys). Reads the storage once.

    `exclude`: URLs whose subtrees are skipped (the job's output, a mask folder under the input).
    """
    if is_manifest(url):
        return _read_manifest(url, options)
    try:
        if not storage.exists(url, options):
            raise JobError(f"input {url}: not found (no such folder, prefix or bucket)")
        if storage.isfile(url, options):
            raise JobError(f"input {url}: is a file; give a folder/prefix or a manifest "
                           f"({', '.join(MANIFEST_EXTENSIONS)})")
        found = storage.find(url, options, skip=tuple(u for u in exclude if u), select=is_image_key)
    except storage.StorageError as exc:
        raise unreachable(exc) from None
    except storage.UnsafeLink as exc:
        raise JobError(f"input {url}: {exc}") from None
    return url.rstrip("/"), check_keys(url, sorted({k for k in found if is_image_key(k)}))


MAX_KEY_BYTES = 1024
"""The longest key an object store takes (S3: 1024 bytes of UTF-8)."""


def check_keys(url: str, keys: list[str]) -> list[str]:
    """`keys` when each is a relative path that stays inside the input (and the output): no ``..``,
    ``.`` or empty segment, no leading ``/``, no control character, at most MAX_KEY_BYTES; else a
    JobError naming the input and the key, before any work."""
    for key in keys:
        why = None
        if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            why = "has a '..', '.' or empty path segment (it would be read or written outside the folder)"
        elif any(ord(c) < 32 or ord(c) == 127 for c in key):
            why = "holds a control character"
        elif len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            why = f"is longer than any storage key ({MAX_KEY_BYTES} bytes)"
        if why:
            raise JobError(f"input {url}: the key {key!r} {why}; fix or drop it")
    return keys


def describe_extensions() -> str:
    return ", ".join(e[1:] for e in IMAGE_EXTENSIONS)


def _read_manifest(url: str, options: dict[str, Any]) -> tuple[str, list[str]]:
    try:
        data = storage.read_bytes(url, options)
    except FileNotFoundError:
        raise JobError(f"input manifest {url}: not found") from None
    except storage.StorageError as exc:
        if "NoSuchBucket" in str(exc) or "does not exist" in str(exc):
            raise JobError(f"input manifest {url}: not found ({exc.reason})") from None
        raise unreachable(exc) from None
    lower = url.lower()
    if lower.endswith(".parquet"):
        from jobs.results import read_parquet_bytes
        table = read_parquet_bytes(data)
        column = "key" if "key" in table.column_names else table.column_names[0]
        entries = [str(v) for v in table.column(column).to_pylist() if v is not None]
    elif lower.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        if rows and "key" in [c.strip() for c in rows[0]]:
            index = [c.strip() for c in rows[0]].index("key")
            rows = rows[1:]
        else:
            index = 0
        entries = [r[index] for r in rows if len(r) > index]
    else:
        entries = data.decode("utf-8-sig").splitlines()
    entries = [e.strip() for e in entries if e.strip() and not e.strip().startswith("#")]
    if not entries:
        raise JobError(f"input manifest {url}: lists no keys")
    absolute = [e for e in entries if "://" in e or e.startswith("/")]
    if absolute and len(absolute) != len(entries):
        raise JobError(f"input manifest {url}: mixes absolute URLs and relative keys")
    if absolute:
        protocol = entries[0].split("://")[0] + "://" if "://" in entries[0] else ""
        paths = [e[len(protocol):] if protocol else e for e in entries]
        if protocol and any(not e.startswith(protocol) for e in entries):
            raise JobError(f"input manifest {url}: lists URLs on several storages")
        root = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
        if root in paths:  # a single distinct file
            root = posixpath.dirname(root)
        keys = sorted({posixpath.relpath(p, root) for p in paths})
        return protocol + root, check_keys(url, keys)
    root = url.rsplit("/", 1)[0] if "/" in url else "."
    return root, check_keys(url, sorted({_without_dot_slash(e) for e in entries}))


def _without_dot_slash(entry: str) -> str:
    while entry.startswith("./"):
        entry = entry[2:]
    return entry
