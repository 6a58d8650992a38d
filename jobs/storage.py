"""Listing a job's inputs once, on any fsspec URL, and small reads/writes of job files.

Inputs are a folder/prefix (recursive; png jpg jpeg webp bmp tif tiff, any case) or a manifest file
(.txt: one key per line; .csv: a 'key' column or the first column; .parquet: a 'key' column or the
first column). Keys are relative to the input root; a manifest of absolute URLs gets their common
folder as root. Errors name the URL and come before any work (JobError, exit code 1).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from typing import Any

from cluster import io as cio
from jobs.spec import JobError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")


def _fs(url: str, options: dict[str, Any]):
    try:
        return cio.filesystem(url, options)
    except Exception as exc:  # unknown protocol, missing optional package (gcsfs), bad options
        raise JobError(f"{url}: cannot open this storage ({type(exc).__name__}: {exc})") from None


def _unreachable(url: str, exc: BaseException) -> JobError:
    reason = str(exc) or type(exc).__name__
    return JobError(f"{url}: storage not reachable ({type(exc).__name__}: {reason})")


def is_manifest(url: str) -> bool:
    return url.lower().endswith(MANIFEST_EXTENSIONS)


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def exists(url: str, options: dict[str, Any]) -> bool:
    """True/False; JobError naming the URL when the storage itself cannot be reached."""
    fs, path = _fs(url, options)
    try:
        fs.invalidate_cache()
        return bool(fs.exists(path))
    except Exception as exc:
        raise _unreachable(url, exc) from None


def isdir(url: str, options: dict[str, Any]) -> bool:
    fs, path = _fs(url, options)
    try:
        return bool(fs.isdir(path))
    except Exception as exc:
        raise _unreachable(url, exc) from None


def is_file_not_folder(url: str, options: dict[str, Any]) -> bool:
    """True when `url` is a file (an object), so that nothing can be written under it as a folder."""
    fs, path = _fs(url, options)
    try:
        fs.invalidate_cache()
        return bool(fs.isfile(path)) and not fs.isdir(path)
    except Exception as exc:
        raise _unreachable(url, exc) from None


def list_inputs(url: str, options: dict[str, Any], *,
                exclude: tuple[str | None, ...] = ()) -> tuple[str, list[str]]:
    """-> (root URL the keys are relative to, sorted unique keys). Reads the storage once.

    `exclude`: URLs whose subtrees are skipped (the job's output, a mask folder under the input).
    """
    if is_manifest(url):
        return _read_manifest(url, options)
    fs, path = _fs(url, options)
    try:
        fs.invalidate_cache()
        if not fs.exists(path):
            raise JobError(f"input {url}: not found (no such folder, prefix or bucket)")
        if fs.isfile(path):
            raise JobError(f"input {url}: is a file; give a folder/prefix or a manifest "
                           f"({', '.join(MANIFEST_EXTENSIONS)})")
        found = fs.find(path, withdirs=False)
    except JobError:
        raise
    except Exception as exc:
        raise _unreachable(url, exc) from None
    base = path.rstrip("/")
    skip = tuple(_fs(u, options)[1].rstrip("/") + "/" for u in exclude if u)
    keys = set()
    for full in found:
        full = full if isinstance(full, str) else str(full)
        if skip and (full + "/").startswith(skip):
            continue
        rel = posixpath.relpath(full, base) if base else full
        if is_image_key(rel):
            keys.add(rel)
    return url.rstrip("/"), sorted(keys)


def read_parquet_bytes(data: bytes):
    """A Parquet file's bytes -> a pyarrow Table, read from a copy in Arrow's own memory.

    Not ``pq.read_table(io.BytesIO(data))``: Arrow's thread pools may release their last references
    to a Python file or buffer after read_table has returned, and one released during interpreter
    shutdown takes the GIL on a thread that Python then ends: std::terminate, exit 134 (status and
    report aborted on exit, more often with torch imported, whose teardown widens the window).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.read_table(pa.BufferReader(sink.getvalue()))


def _read_manifest(url: str, options: dict[str, Any]) -> tuple[str, list[str]]:
    try:
        data = cio.read_bytes(url, options)
    except FileNotFoundError:
        raise JobError(f"input manifest {url}: not found") from None
    except Exception as exc:
        if "NoSuchBucket" in str(exc) or "does not exist" in str(exc) or isinstance(exc, FileNotFoundError):
            raise JobError(f"input manifest {url}: not found ({exc})") from None
        raise _unreachable(url, exc) from None
    lower = url.lower()
    if lower.endswith(".parquet"):
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
        return protocol + root, keys
    root = url.rsplit("/", 1)[0] if "/" in url else "."
    return root, sorted({e.lstrip("./") if e.startswith("./") else e for e in entries})


def read_json(url: str, options: dict[str, Any]) -> dict | None:
    """The JSON object at `url`, or None when there is none."""
    try:
        data = cio.read_bytes(url, options)
    except FileNotFoundError:
        return None
    except Exception as exc:
        if not exists(url, options):
            return None
        raise _unreachable(url, exc) from None
    return json.loads(data.decode())


def write_json(url: str, obj: Any, options: dict[str, Any]) -> None:
    """One write of a JSON document (deterministic key: a retry overwrites)."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    try:
        cio.write_bytes(url, data, options)
    except Exception as exc:
        raise JobError(f"{url}: cannot write ({type(exc).__name__}: {exc})") from None


def list_names(url: str, options: dict[str, Any]) -> list[str]:
    """Base names of the files directly under the folder `url` (fresh, not cached); [] if none."""
    fs, path = _fs(url, options)
    try:
        fs.invalidate_cache()
        if not fs.exists(path):
            return []
        return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def remove(url: str, options: dict[str, Any]) -> None:
    """Delete a file or a folder tree if present (used by --overwrite only)."""
    fs, path = _fs(url, options)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)
