"""The driver's errors and the exit codes of `ddnm-batch` (one home for both).

Exit codes: 0 every image ok; 3 the job finished and some images failed (each one has a row naming the
file and the reason); 1 the job could not run (bad spec, unreachable storage, refused output), with one
line on stderr naming the problem; 130 / 143 interrupted by Ctrl-C / SIGTERM (committed shards kept).
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED_IMAGES = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class JobError(Exception):
    """The job could not run (bad spec, unreachable storage, refused output): exit code 1."""


class SpecError(JobError, ValueError):
    """A spec field is invalid; the message names the field and the value."""


_UNWRITABLE_FIX = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there or raise the quota",
                   errno.EROFS: "make it writable"}


def output_unwritable(output: str, exc) -> JobError:
    """The job's one line for an output that takes no more writes (`exc`: a
    ``cluster.storage.StorageUnwritable``): what is wrong, where, and what to do."""
    fix = _UNWRITABLE_FIX.get(exc.errno, "make it writable")
    return JobError(f"output {output}: {exc.reason} (writing {exc.url}); committed shards are kept: {fix} "
                    "and run again")
