"""Every access to object storage, for the driver and the workers alike (fsspec).

Any fsspec URL works: a local path, ``file://``, ``s3://`` (s3fs; an endpoint through
``storage_options={"endpoint_url": ...}`` or AWS_ENDPOINT_URL, as for any s3fs program), ``gs://``...

Errors: a missing object is ``FileNotFoundError``; everything the storage itself gets wrong is a
:class:`StorageError` naming the URL, after retries where retrying can help. The storage failing as a
whole, not one object, is a :class:`StorageUnusable`, of three kinds, so that the job can say what to
do: :class:`StorageUnreachable` (connection refused or timed out, or 5xx / throttling on every try),
:class:`StorageFull` (a quota or full drives: Ceph's 403 ``QuotaExceeded``, MinIO's 507
``XMinioStorageFull`` and 400 ``XMinioAdminBucketQuotaExceeded``, a local ``ENOSPC`` / ``EDQUOT``)
and, more generally, :class:`StorageUnwritable` (also a read-only file system, ``EROFS``); the last two
are never retried, since waiting does not free space. Permission and path-shape errors are not retried
either. Bad file *contents* are not storage errors (see ``cluster.images.BadInput``).

Retries, and how long a dead storage takes to fail. One operation (a read, a write, a listing) is tried
`RETRY_ATTEMPTS` (3) times by :func:`with_retries`, `RETRY_BACKOFF` seconds apart, doubled each time
(0.25 s, then 0.5 s). On S3 each try is one botocore call with botocore's "standard" retry mode and
`S3_RETRY_ATTEMPTS` (3) requests (random backoff below 1 s, then below 2 s; a server's
``x-amz-retry-after`` may add up to 5 s to each), and s3fs's own retry loop is turned off
(:data:`S3_DEFAULTS`), so the layers multiply to 9 requests at most. An endpoint that refuses
connections therefore fails one operation within 3 x 3 s + 0.75 s < 10 s (at most 3 x 13 s + 0.75 s
with retry-after headers); one that does not answer at all adds `connect_timeout` (5 s) per request, at
most 9 x 5 s more. A job stops at the first operation that fails so (the driver's, or a worker's: see
``cluster.worker``), then spends at most one more releasing its lease (after waiting up to 10 s for a
heartbeat under way). Measured with a local endpoint (tests/integration/test_faults_s3.py): about 8 s
from the storage going down mid-job to the driver's exit.

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

RETRY_ATTEMPTS = 3
"""Tries of one storage operation in :func:`with_retries` (each one a client call with its own retries)."""
RETRY_BACKOFF = 0.25
"""Seconds between the first and the second try of :func:`with_retries`; doubled before each next one."""
S3_RETRY_ATTEMPTS = 3
"""Requests per botocore call (the first one included), in botocore's standard retry mode."""
S3_DEFAULTS = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": S3_RETRY_ATTEMPTS},
                                 "connect_timeout": 5, "read_timeout": 30}}
"""Storage options every s3:// filesystem gets unless the job's storage_options set them (merged key by
key into ``config_kwargs``): the retry policy above, whatever botocore's or the host's defaults are."""

FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded",
                        "BucketQuotaExceeded", "StorageFull", "InsufficientStorage"})
"""S3 error codes that mean "no room for this write" (Ceph RGW, MinIO old and new, generic 507)."""


class StorageError(OSError):
    """A storage operation failed (network, throttling, permissions, space, unknown protocol).
    `errno`: the local disk's error number where there was one, else None."""

    def __init__(self, url: str, reason: str, code: int | None = None):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.errno = code

    def __reduce__(self):  # travels from a Ray worker to the driver intact
        return type(self), (self.url, self.reason, self.errno)


class StorageUnusable(StorageError):
    """The storage as a whole cannot serve the job, not one object's problem: every other operation
    would fail the same way (a worker stops its shard for it, the job stops; other StorageErrors, such
    as a permission or path-shape error, are one image's failed row)."""


class StorageUnreachable(StorageUnusable):
    """The storage did not answer, or answered only 5xx / throttling, on every try."""


class StorageUnwritable(StorageUnusable):
    """The storage takes no more writes (read-only, or :class:`StorageFull`). Never retried: every other
    write there would fail the same way."""


class StorageFull(StorageUnwritable):
    """The storage refused a write for want of space: a quota, or full drives. Never retried."""


UNWRITABLE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system"}
"""The local error numbers of a storage that takes no more writes, and how to say each."""


def unwritable(url: str, code: int) -> StorageUnwritable:
    """The error for a local write refused with `code` (a key of :data:`UNWRITABLE`)."""
    cls = StorageUnwritable if code == errno.EROFS else StorageFull
    return cls(url, UNWRITABLE[code], code)


class UnsafeLink(ValueError):
    """A symbolic link in a local folder being listed that leads outside the folder, to nothing, or
    round in a loop (the message names the link and its target)."""


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` for an fsspec URL; instances are cached by fsspec per (protocol, options).

    s3:// gets :data:`S3_DEFAULTS` under the given options. An unknown protocol, a missing optional
    package (gcsfs) or bad options are a StorageError."""
    import fsspec

    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    s3 = url.startswith(("s3://", "s3a://"))
    if s3:
        options["config_kwargs"] = {**S3_DEFAULTS["config_kwargs"], **(options.get("config_kwargs") or {})}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except Exception as exc:
        raise StorageError(url, f"cannot open this storage ({type(exc).__name__}: {exc})") from None
    if s3:
        fs.retries = 1  # s3fs's own loop off: with_retries and botocore retry (see the module docstring)
    return fs, path


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


def with_retries(url: str, fn, attempts: int = RETRY_ATTEMPTS, *, fs=None,
                 precondition_is_final: bool = False):
    """Run `fn`; transient storage failures are retried with a short backoff (module docstring).

    A missing object raises FileNotFoundError at once; no space (StorageFull), a read-only file
    system (StorageUnwritable), permission and path-shape errors raise a StorageError at once
    (retrying cannot fix them); anything else is
    retried, then a StorageError (StorageUnreachable for connection errors, timeouts, 5xx and
    throttling). `fs` (the filesystem `fn` uses) lets the error name the endpoint.
    With `precondition_is_final`, a failed write condition (HTTP 412) raises at once, for the caller.
    """
    t0 = time.monotonic()
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, UnsafeLink, StorageUnusable):
            raise
        except Exception as e:  # OSError, botocore / aiohttp errors: all storage-side
            if precondition_is_final and "pre-condition" in str(e):
                raise _PreconditionFailed(str(e)) from e
            kind = _kind(e)
            if kind in ("full", "errno", "final") or i == attempts - 1:
                raise _failure(url, e, kind, fs, tries=i + 1, seconds=time.monotonic() - t0) from e
            time.sleep(RETRY_BACKOFF * 2**i)
    raise AssertionError("unreachable")


def _kind(e: BaseException) -> str:
    """'full' (no space on an object store), 'errno' (a local disk full, over quota or read-only: see
    :data:`UNWRITABLE`), 'final' (permission, path shape), 'unreachable' (connection, timeout, 5xx,
    throttling) or 'other' (retried, then a plain StorageError)."""
    code, status = _s3_error(e)
    if code in FULL_CODES or status == 507:
        return "full"
    chain = _chain(e)
    if _local_errno(chain) is not None:
        return "errno"
    if isinstance(e, PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError):
        return "final"
    names = {c.__name__ for x in chain for c in type(x).__mro__}
    if names & {"ConnectionError", "HTTPClientError", "TimeoutError", "ClientConnectionError", "gaierror"}:
        return "unreachable"
    if (status or 0) >= 500 or code in ("SlowDown", "ServiceUnavailable", "Throttling", "RequestTimeout"):
        return "unreachable"
    if isinstance(e, OSError) and e.errno == errno.EBUSY:  # s3fs's translation of 503 / SlowDown
        return "unreachable"
    return "other"


def _local_errno(chain: list[BaseException]) -> int | None:
    """The first error number of :data:`UNWRITABLE` in the chain, if any."""
    return next((x.errno for x in chain if isinstance(x, OSError) and x.errno in UNWRITABLE), None)


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _s3_error(e: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of the botocore ClientError in `e`'s chain (s3fs wraps it), if any."""
    for x in _chain(e):
        response = getattr(x, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return response["Error"].get("Code"), int(status) if status else None
    return None, None


def endpoint(fs) -> str:
    """Where `fs` sends its requests, for messages: an S3 endpoint URL, 'this machine's disk', ..."""
    if fs is None:
        return "the storage"
    if _is_local(fs):
        return "this machine's disk"
    if _is_s3(fs):
        url = (getattr(fs, "endpoint_url", None) or (fs.client_kwargs or {}).get("endpoint_url")
               or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        return url or "AWS S3"
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"the {protocol}:// storage"


def _failure(url: str, e: BaseException, kind: str, fs, *, tries: int, seconds: float) -> StorageError:
    """The StorageError for `e`, its reason in plain words first, then the storage's own."""
    code, status = _s3_error(e)
    said = f"{type(e).__name__}: {e}".splitlines()[0][:400]
    where = endpoint(fs)
    if kind == "errno":
        return unwritable(url, _local_errno(_chain(e)))
    if kind == "full":
        return StorageFull(url, f"no space left: {where} refused the write ({said})")
    if kind == "unreachable":
        how = "could not be reached" if not status else f"answered {status}" + (
            f" {code}" if code and code != str(status) else "")  # a HEAD's error has no body, no code
        return StorageUnreachable(url, f"storage unreachable: {where} {how} on {tries} "
                                       f"{'try' if tries == 1 else 'tries'} over {seconds:.1f} s ({said})")
    return StorageError(url, said)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    """The whole object at `url`. Raises FileNotFoundError if it does not exist, StorageError else."""
    fs, path = filesystem(url, storage_options)
    return with_retries(url, lambda: fs.cat_file(path), fs=fs)


def exists(url: str, storage_options: dict | None = None) -> bool:
    """Whether a file or folder is at `url` (fresh, not from fsspec's listing cache)."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    return bool(with_retries(url, lambda: fs.exists(path), fs=fs))


def isdir(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(with_retries(url, lambda: fs.isdir(path), fs=fs))


def isfile(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(with_retries(url, lambda: fs.isfile(path), fs=fs))


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
        found = with_retries(url, lambda: _find_local(path, select), fs=fs)
    else:
        found = with_retries(url, lambda: fs.find(path, withdirs=False), fs=fs)
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
        names = with_retries(url, lambda: fs.ls(path, detail=False), fs=fs)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(str(p).rstrip("/")) for p in names)


def remove(url: str, storage_options: dict | None = None) -> None:
    """Delete a file or a folder tree if present."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    if with_retries(url, lambda: fs.exists(path), fs=fs):
        with_retries(url, lambda: fs.rm(path, recursive=True), fs=fs)


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
        with_retries(url, lambda: _write_local(path, data), fs=fs)
    else:
        with_retries(url, lambda: fs.pipe_file(path, data), fs=fs)


PARTIAL_PREFIX = ".tmp-"
"""The name a local write has until its ``os.replace``: a process killed in between leaves it behind."""


def remove_partial_writes(url: str, storage_options: dict | None = None) -> list[str]:
    """Delete the files a killed local write left directly under the folder `url` (named
    :data:`PARTIAL_PREFIX`...; never read) -> their names. Only a run that holds the output may call
    it (another writer's write under way would go too). Object stores leave none: a no-op there."""
    fs, path = filesystem(url, storage_options)
    if not _is_local(fs):
        return []
    names = [n for n in list_names(url, storage_options) if n.startswith(PARTIAL_PREFIX)]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            with_retries(url, lambda n=name: os.unlink(os.path.join(path, n)), fs=fs)
    return names


def _write_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=PARTIAL_PREFIX, suffix=os.path.basename(path)[-32:])
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
            before = with_retries(url, lambda: fs.info(path), fs=fs).get("ETag")
            data = with_retries(url, lambda: fs.cat_file(path), fs=fs)
            fs.invalidate_cache(path)
            after = with_retries(url, lambda: fs.info(path), fs=fs).get("ETag")
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
        return with_retries(url, lambda: _write_local_if(path, data, tag), fs=fs)
    if _is_s3(fs):
        kwargs = {"mode": "create"} if tag is None else {"IfMatch": tag}
        try:
            with_retries(url, lambda: fs.pipe_file(path, data, **kwargs), fs=fs,
                         precondition_is_final=True)
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
        return with_retries(url, lambda: _delete_local_if(path, tag), fs=fs)
    current = read_tagged(url, storage_options)
    if current is None or current[1] != tag:
        return False
    with_retries(url, lambda: fs.rm_file(path), fs=fs)
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
