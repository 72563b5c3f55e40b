"""The storage's folders: where an image is in its life. The wire calls the folder ``state``
(``/sendImage?state=working``), a name from the seed; it is not a task state."""

from __future__ import annotations

import enum
import hashlib
import re

# A result is stored under its task id and a version named after the lease that made it, and
# the task's finish (the database's lease check) says which version is the job's result: a
# worker that lost its lease can store its result, but never where the job's result is read.
RESULT_VERSION_PATTERN = re.compile(r"[0-9a-f]{32}")


class Folder(enum.StrEnum):
    WORKING = "working"  # the uploaded image, until the task ends
    FINISHED = "finished"  # the result


def result_version(lease: str) -> str:
    """The version a lease's result is stored as (a digest: no secret in names or URLs)."""
    return hashlib.sha256(lease.encode()).hexdigest()[:32]
