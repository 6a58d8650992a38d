"""The driver's errors and the exit codes of `ddnm-batch` (one home for both).

Exit codes: 0 every image ok; 3 the job finished and some images failed (each one has a row naming the
file and the reason); 1 the job could not run (bad spec, unreachable storage, refused output), with one
line on stderr naming the problem; 130 / 143 interrupted by Ctrl-C / SIGTERM (committed shards kept).
"""

from __future__ import annotations

from cluster.storage import StorageError, StorageFull, StorageUnreachable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED_IMAGES = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class JobError(Exception):
    """The job could not run (bad spec, unreachable storage, refused output): exit code 1."""


class SpecError(JobError, ValueError):
    """A spec field is invalid; the message names the field and the value."""


def storage_failed(exc: StorageError) -> str:
    """The one line for a storage failure that stops a run: the URL, the plain reason (from
    `cluster.storage`, which names the endpoint), and what to do."""
    if isinstance(exc, StorageFull):
        todo = "free space or raise the quota there, then run again (committed shards are kept)"
    elif isinstance(exc, StorageUnreachable):
        todo = "run again once it answers (committed shards are kept)"
    else:
        todo = "committed shards are kept, run again to resume"
    return f"{exc}; {todo}"
