"""cluster.storage's retry policy and its error classes: what is retried, how often, how long it
sleeps, what is never retried (no space, permissions), and the line the job prints for each."""

from __future__ import annotations

import errno
import pickle

import pytest

from cluster import storage
from jobs.errors import storage_failed


class _ClientError(Exception):
    """Shaped like botocore's ClientError (what s3fs wraps in an OSError)."""

    def __init__(self, code: str, status: int):
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code, "Message": "..."},
                         "ResponseMetadata": {"HTTPStatusCode": status}}


def _s3_error(code: str, status: int) -> OSError:
    err = OSError(errno.EIO, f"An error occurred ({code}) when calling the PutObject operation")
    err.__cause__ = _ClientError(code, status)
    return err


@pytest.fixture
def sleeps(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", slept.append)
    return slept


def _calls(exc: BaseException):
    calls = []

    def fn():
        calls.append(1)
        raise exc

    return fn, calls


def test_a_dead_endpoint_is_tried_three_times_with_a_bounded_backoff(sleeps):
    fn, calls = _calls(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    with pytest.raises(storage.StorageUnreachable, match=r"^s3://b/k: storage unreachable: the storage "
                                                          r"could not be reached on 3 tries over .* s \("):
        storage.with_retries("s3://b/k", fn)
    assert len(calls) == storage.RETRY_ATTEMPTS == 3
    assert sleeps == [0.25, 0.5]


@pytest.mark.parametrize("code,status", [("SlowDown", 503), ("InternalError", 500), ("503", 503)])
def test_throttling_and_5xx_are_retried_then_unreachable(sleeps, code, status):
    fn, calls = _calls(_s3_error(code, status))
    with pytest.raises(storage.StorageUnreachable, match=rf"answered {status}"):
        storage.with_retries("s3://b/k", fn)
    assert len(calls) == 3


@pytest.mark.parametrize("error", [_s3_error("QuotaExceeded", 403), _s3_error("XMinioStorageFull", 507),
                                   _s3_error("XMinioAdminBucketQuotaExceeded", 400),
                                   _s3_error("SomethingNew", 507), OSError(errno.ENOSPC, "No space left"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded")])
def test_no_space_is_never_retried(sleeps, error):
    fn, calls = _calls(error)
    said = r"no space left: the storage refused the write" if error.errno not in storage.UNWRITABLE else \
        r"(no space left on device|disk quota exceeded)$"  # a local disk's error number, said as such
    with pytest.raises(storage.StorageFull, match=rf"^s3://b/k: {said}"):
        storage.with_retries("s3://b/k", fn)
    assert len(calls) == 1 and sleeps == []


def test_permission_is_not_retried_and_not_unreachable(sleeps):
    fn, calls = _calls(PermissionError("Access Denied"))
    with pytest.raises(storage.StorageError) as e:
        storage.with_retries("s3://b/k", fn)
    assert type(e.value) is storage.StorageError and len(calls) == 1


def test_a_missing_object_is_file_not_found_at_once(sleeps):
    fn, calls = _calls(FileNotFoundError("s3://b/k"))
    with pytest.raises(FileNotFoundError):
        storage.with_retries("s3://b/k", fn)
    assert len(calls) == 1


def test_s3_filesystems_get_the_retry_policy_and_options_win():
    fs, _ = storage.filesystem("s3://b/k", {"endpoint_url": "http://127.0.0.1:9"})
    assert fs.retries == 1  # s3fs's own loop off
    policy = {"mode": "standard", "total_max_attempts": storage.S3_RETRY_ATTEMPTS}
    assert fs.config_kwargs["retries"] == policy
    assert fs.config_kwargs["connect_timeout"] == 5
    assert storage.endpoint(fs) == "http://127.0.0.1:9"
    mine = {"retries": {"mode": "adaptive", "total_max_attempts": 7}}
    fs, _ = storage.filesystem("s3://b/k", {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": mine})
    assert fs.config_kwargs["retries"] == mine["retries"] and fs.config_kwargs["read_timeout"] == 30


@pytest.mark.parametrize("cls", [storage.StorageError, storage.StorageUnreachable, storage.StorageFull])
def test_storage_errors_travel_intact(cls):  # from a Ray worker to the driver
    back = pickle.loads(pickle.dumps(cls("s3://b/k", "why")))
    assert type(back) is cls and (back.url, back.reason, str(back)) == ("s3://b/k", "why", "s3://b/k: why")


def test_the_job_says_what_to_do_for_each_kind():
    full = storage_failed(storage.StorageFull("s3://b/o/x.png", "no space left: ..."))
    assert full.endswith("; free space or raise the quota there, then run again (committed shards are kept)")
    down = storage_failed(storage.StorageUnreachable("s3://b/o/x.png", "storage unreachable: ..."))
    assert down.endswith("; run again once it answers (committed shards are kept)")
    other = storage_failed(storage.StorageError("s3://b/o/x.png", "PermissionError: Access Denied"))
    assert other == ("s3://b/o/x.png: PermissionError: Access Denied; committed shards are kept, run again "
                     "to resume")
