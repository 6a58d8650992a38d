"""Every access to object storage, for the driver and the workers alike (fsspec).

Any fsspec URL works: a local path, ``file://``, ``s3://`` (s3fs; an endpoint through
``storage_options={"endpoint_url": ...}`` or AWS_ENDPOINT_URL, as for any s3fs program), ``gs://``...

Errors: a missing object is ``FileNotFoundError``; everything the storage itself gets wrong (network,
throttling, permissions, an unknown protocol) is :class:`StorageError` naming the URL, after retries
where retrying can help; a storage that takes no more writes (a full disk, a quota, read-only) is
:class:`StorageUnwritable`, at once. Bad file *contents* are not storage errors (see
``cluster.images.BadInput``).

Writes are single writes, so writing the same key twice (a retried shard) overwrites and never leaves
a half-written or duplicate object: one PUT on object stores, a temporary file + ``os.replace`` on a
local disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import tempfile
import time
from typing import Any


class StorageError(OSError):
    """A storage operation failed (network, throttling, permissions, unknown protocol)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


UNWRITABLE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system"}
"""The errno values of a storage that takes no more writes, and how to say each."""


class StorageUnwritable(StorageError):
    """The storage takes no more writes (`errno`: a key of UNWRITABLE): retrying cannot help, and
    every other write there would fail the same way."""

    def __init__(self, url: str, code: int):
        super().__init__(url, UNWRITABLE[code])
        self.errno = code

    def __reduce__(self):  # OSError's pickles the message alone; this crosses Ray from the workers
        return type(self), (self.url, self.errno)


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` for an fsspec URL; instances are cached by fsspec per (protocol, options).

    An unknown protocol, a missing optional package (gcsfs) or bad options are a StorageError."""
    import fsspec

    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:
        raise StorageError(url, f"cannot open this storage ({type(exc).__name__}: {exc})") from None


def join(url: str, *parts: str) -> str:
    """Join URL parts with ``/``: ``join("s3://b/out", "images", "a/b.png") == "s3://b/out/images/a/b.png"``."""
    out = url.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def with_retries(url: str, fn, attempts: int = 3, *, precondition_is_final: bool = False):
    """Run `fn`; transient storage failures are retried with a short backoff.

    A missing object raises FileNotFoundError at once; a full, over-quota or read-only storage is a
    StorageUnwritable at once; permission and path-shape errors become a StorageError at once
    (retrying cannot fix them); anything else is retried, then a StorageError.
    With `precondition_is_final`, a failed write condition (HTTP 412) raises at once, for the caller.
    """
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, UnsafeLink, StorageUnwritable):
            raise
        except OSError as e:
            if e.errno in UNWRITABLE:
                raise StorageUnwritable(url, e.errno) from e
            if precondition_is_final and "pre-condition" in str(e):
                raise _PreconditionFailed(str(e)) from e
            if isinstance(e, PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError):
                raise StorageError(url, f"{type(e).__name__}: {e}") from e
            if i == attempts - 1:
                raise StorageError(url, f"{type(e).__name__}: {e}") from e
            time.sleep(0.25 * 2**i)
        except Exception as e:  # botocore / aiohttp / OSError: all storage-side
            if i == attempts - 1:
                raise StorageError(url, f"{type(e).__name__}: {e}") from e
            time.sleep(0.25 * 2**i)
    raise AssertionError("unreachable")


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    """The whole object at `url`. Raises FileNotFoundError if it does not exist, StorageError else."""
    fs, path = filesystem(url, storage_options)
    return with_retries(url, lambda: fs.cat_file(path))


def exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether a file or folder is at `url` (fresh, not from fsspec's listing cache)."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    return bool(with_retries(url, lambda: fs.exists(path)))


def isdir(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(with_retries(url, lambda: fs.isdir(path)))


def isfile(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(with_retries(url, lambda: fs.isfile(path)))


class UnsafeLink(ValueError):
    """A symbolic link in a local folder being listed that leads outside the folder, to nothing, or
    round in a loop (the message names the link and its target)."""


def find(url: str, storage_options: dict | None = None, *, skip: tuple[str, ...] = (),
         select=None) -> list[str]:
    """Every file below the folder `url`, as paths relative to it (fresh listing), skipping the
    subtrees of the URLs in `skip`. `select(relative_path)`: the files that matter (default all).

    On a local disk, symbolic links are checked, so that a listing never leads outside `url` and
    never loops: a link to a file inside the folder is a file; a link to a folder inside it is not
    followed (its files are listed where they are); a link leading outside the folder, a dangling one
    and a loop raise :class:`UnsafeLink` (for files, only those `select` picks). An unreadable
    subfolder is a StorageError, never a silently shorter listing."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    if _is_local(fs):
        found = with_retries(url, lambda: _find_local(path, select))
    else:
        found = with_retries(url, lambda: fs.find(path, withdirs=False))
    base = path.rstrip("/")
    skipped = tuple(filesystem(u, storage_options)[1].rstrip("/") + "/" for u in skip)
    out = []
    for full in found:
        full = str(full)
        if skipped and (full + "/").startswith(skipped):
            continue
        out.append(posixpath.relpath(full, base) if base else full)
    return out


def _find_local(base: str, select) -> list[str]:
    """`find` on a local disk, links checked (see there)."""
    import errno
    import stat

    if not os.path.isdir(base):
        raise FileNotFoundError(base)
    real_base = os.path.realpath(base)
    out = []

    def fail(err: OSError) -> None:
        raise err

    for folder, dirs, files in os.walk(base, onerror=fail, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(folder, name)
            is_file = name in files
            if not os.path.islink(full):
                if is_file:
                    out.append(full)
                continue
            if is_file and select is not None and not select(posixpath.relpath(full, base)):
                continue
            target = os.readlink(full)
            try:
                mode = os.stat(full).st_mode
            except OSError as exc:
                what = "loops (a link to itself or to a link back)" if exc.errno == errno.ELOOP \
                    else "points to nothing"
                raise UnsafeLink(f"{full} is a symbolic link to {target!r} that {what}; remove it or "
                                 "point it at the file") from None
            real = os.path.realpath(full)
            if real != real_base and not real.startswith(real_base.rstrip(os.sep) + os.sep):
                raise UnsafeLink(f"{full} is a symbolic link to {real}, outside the folder {base}, and "
                                 "nothing outside the input is read; copy what it points to into the "
                                 "folder, or give a folder that holds both")
            if not stat.S_ISDIR(mode):
                out.append(full)
    return out


def list_names(url: str, storage_options: dict | None = None) -> list[str]:
    """Base names of the entries directly under the folder `url` (fresh, not cached); [] if none."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    try:
        names = with_retries(url, lambda: fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(str(p).rstrip("/")) for p in names)


def remove(url: str, storage_options: dict | None = None) -> None:
    """Delete a file or a folder tree if present."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    if with_retries(url, lambda: fs.exists(path)):
        with_retries(url, lambda: fs.rm(path, recursive=True))


def read_json(url: str, storage_options: dict | None = None) -> Any | None:
    """The JSON document at `url`, or None when there is none."""
    try:
        data = read_bytes(url, storage_options)
    except FileNotFoundError:
        return None
    return json.loads(data.decode())


def write_json(url: str, obj: Any, storage_options: dict | None = None) -> None:
    """One write of a JSON document (deterministic key: a retry overwrites)."""
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), storage_options)


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write `data` to `url` in one write (one PUT, or temp file + os.replace), overwriting."""
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        with_retries(url, lambda: _write_local(path, data))
    else:
        with_retries(url, lambda: fs.pipe_file(path, data))


def _write_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path)[-32:])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise




# ----------------------------------------------------------------------------- conditional writes
# What makes one writer per output possible (jobs/lease.py). Atomic where the store allows it: an
# exclusive create / compare-and-swap under an flock on a local disk, a conditional PUT (If-None-Match,
# If-Match) on S3. Other stores get check-then-write, which two writers in the same instant can both pass.


def conditional_writes_are_atomic(url: str, storage_options: dict | None = None) -> bool:
    fs, _ = filesystem(url, storage_options)
    return _is_local(fs) or _is_s3(fs)


def _is_s3(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocol or "s3a" in protocol


def read_tagged(url: str, storage_options: dict | None = None) -> tuple[bytes, str] | None:
    """(bytes, tag) of the object at `url`, or None; the tag changes with every write (ETag on object
    stores, the content's sha256 on a local disk)."""
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        try:
            data = _read_local(path)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
    for _ in range(3):  # the ETag before and after the read agree: the bytes are that version's
        try:
            fs.invalidate_cache(path)
            before = with_retries(url, lambda: fs.info(path)).get("ETag")
            data = with_retries(url, lambda: fs.cat_file(path))
            fs.invalidate_cache(path)
            after = with_retries(url, lambda: fs.info(path)).get("ETag")
        except FileNotFoundError:
            return None
        if before == after:
            return data, str(after or hashlib.sha256(data).hexdigest())
    raise StorageError(url, "the object changed during three reads in a row")


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_if(url: str, data: bytes, storage_options: dict | None = None, *, tag: str | None) -> bool:
    """Write `data` only if the object is absent (`tag=None`) or still at version `tag`; False when the
    condition no longer holds (someone else wrote first)."""
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        return with_retries(url, lambda: _write_local_if(path, data, tag))
    if _is_s3(fs):
        kwargs = {"mode": "create"} if tag is None else {"IfMatch": tag}
        try:
            with_retries(url, lambda: fs.pipe_file(path, data, **kwargs), precondition_is_final=True)
        except _PreconditionFailed:
            return False
        return True
    current = read_tagged(url, storage_options)  # best effort on stores without conditional writes
    if (current[1] if current else None) != tag:
        return False
    write_bytes(url, data, storage_options)
    return True


def delete_if(url: str, storage_options: dict | None = None, *, tag: str) -> bool:
    """Delete the object if it is still at version `tag` (checked, then deleted: not atomic off local
    disks, which is fine for a lease its holder releases)."""
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        return with_retries(url, lambda: _delete_local_if(path, tag))
    current = read_tagged(url, storage_options)
    if current is None or current[1] != tag:
        return False
    with_retries(url, lambda: fs.rm_file(path))
    return True


def _write_local_if(path: str, data: bytes, tag: str | None) -> bool:
    with _local_lock(path):
        current = None
        with contextlib.suppress(FileNotFoundError):
            current = hashlib.sha256(_read_local(path)).hexdigest()
        if current != tag:
            return False
        _write_local(path, data)
        return True


def _delete_local_if(path: str, tag: str) -> bool:
    with _local_lock(path):
        try:
            if hashlib.sha256(_read_local(path)).hexdigest() != tag:
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True


@contextlib.contextmanager
def _local_lock(path: str):
    import fcntl

    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "." + os.path.basename(path) + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _PreconditionFailed(Exception):
    pass
