"""A storage that takes no more writes (full disk, quota, read-only): classified at once, not retried,
carried across Ray, and said to the user in one line with what to do."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from cluster import storage
from jobs.errors import storage_failed


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "no space left on device"),
                                              (errno.EDQUOT, "disk quota exceeded"),
                                              (errno.EROFS, "read-only file system")])
def test_unwritable_is_not_retried(code, reason):
    calls = []

    def write():
        calls.append(1)
        raise OSError(code, os.strerror(code))

    with pytest.raises(storage.StorageUnwritable, match=rf"^out/a\.png: {reason}$") as info:
        storage.with_retries("out/a.png", write)
    assert len(calls) == 1 and info.value.errno == code and info.value.reason == reason
    again = pickle.loads(pickle.dumps(info.value))  # as it crosses Ray from a worker
    assert type(again) is type(info.value) and str(again) == str(info.value)
    assert isinstance(again, storage.StorageFull) == (code != errno.EROFS)  # read-only is not "full"
    assert (again.url, again.errno, again.reason) == ("out/a.png", code, reason)


def test_other_os_errors_are_still_retried(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def write():
        calls.append(1)
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(storage.StorageError) as info:
        storage.with_retries("out/a.png", write)
    assert len(calls) == 3 and not isinstance(info.value, storage.StorageUnwritable)


def test_unwritable_local_disk_through_the_lease_writes(tmp_path, monkeypatch):
    """The lease's compare-and-swap on a local disk is classified too (its lock file comes first)."""
    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(storage.os, "makedirs", refused)
    url = str(tmp_path / "out" / "_lease.json")
    with pytest.raises(storage.StorageUnwritable, match="read-only file system"):
        storage.write_if(url, b"{}", tag=None)
    with pytest.raises(storage.StorageUnwritable, match="read-only file system"):
        storage.delete_if(url, tag="x")


@pytest.mark.parametrize(("code", "fix"), [(errno.ENOSPC, "free space or raise the quota there"),
                                           (errno.EDQUOT, "free space or raise the quota there"),
                                           (errno.EROFS, "make it writable")])
def test_the_line_says_what_to_do(code, fix):
    exc = storage.unwritable("/d/out/shards/shard-000003.parquet", code)
    assert storage_failed(exc) == (f"/d/out/shards/shard-000003.parquet: {storage.UNWRITABLE[code]}; {fix}, "
                                   "then run again (committed shards are kept)")
