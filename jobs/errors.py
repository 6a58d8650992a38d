"""The driver's errors and the exit codes of `ddnm-batch` (one home for both).

Exit codes: 0 every image ok; 3 the job finished and some images failed (each one has a row naming the
file and the reason); 1 the job could not run (bad spec, unreachable storage, refused output), with one
line on stderr naming the problem; 130 / 143 interrupted by Ctrl-C / SIGTERM (committed shards kept).
"""

from __future__ import annotations

import re

from cluster.storage import StorageError, StorageFull, StorageUnreachable, StorageUnwritable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FAILED_IMAGES = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


SHOWN_CHARS = 1000
"""A run of more non-blank characters than this in an error message is shown cut (a hostile or mistaken
10 MB value must not become a 10 MB line on stderr); URLs and keys are far shorter."""


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` with every run of more than `limit` non-blank characters cut to its head and tail and
    the number of characters left out (``'xxxx...(9999900 more characters)...xx'``), and the whole cut
    the same way if it is still longer than 4 x `limit`."""
    def cut(word: str) -> str:
        return f"{word[:60]}...({len(word) - 80} more characters)...{word[-20:]}"
    if len(text) <= limit:
        return text
    text = re.sub(rf"\S{{{limit + 1},}}", lambda m: cut(m.group(0)), text)
    if len(text) > 4 * limit:
        return f"{text[:3 * limit]}...({len(text) - 3 * limit - 200} more characters)...{text[-200:]}"
    return text


class JobError(Exception):
    """The job could not run (bad spec, unreachable storage, refused output): exit code 1.

    The message is one line a person can act on; overlong values in it are cut (:func:`shorten`)."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(shorten(str(message)), *args)


class SpecError(JobError, ValueError):
    """A spec field is invalid; the message names the field and the value."""


def storage_failed(exc: StorageError) -> str:
    """The one line for a storage failure that stops a run: the URL, the plain reason (from
    `cluster.storage`, which names the endpoint), and what to do."""
    if isinstance(exc, StorageFull):
        todo = "free space or raise the quota there, then run again (committed shards are kept)"
    elif isinstance(exc, StorageUnwritable):
        todo = "make it writable, then run again (committed shards are kept)"
    elif isinstance(exc, StorageUnreachable):
        todo = "run again once it answers (committed shards are kept)"
    else:
        todo = "committed shards are kept, run again to resume"
    return shorten(f"{exc}; {todo}")
