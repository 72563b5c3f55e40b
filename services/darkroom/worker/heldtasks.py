"""The tasks a loop process holds, kept where its parent can read them if the process dies.

A decoder that crashes (a segmentation fault on a hostile file) or the kernel's OOM killer ends
a loop process in the middle of a task, with no chance to say so. Its lease would put the task
back only when it expires (``lease_seconds``, a minute by default), and a file that crashes the
decoder would take a loop that long each attempt. The loop writes what it holds here at each
change (``TaskLoop(held_changed=...)``); the parent, seeing the process gone, fails each task at
once as one attempt spent (``fail_lost``), with how the process ended as the error, so a
poisonous file fails after ``max_attempts`` quick tries, saying why.

Written without fsync: only the process's death must be survived, not the machine's; a task
whose record a power cut lost is still put back by its lease.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from darkroom.contract.tasks import Claim
from darkroom.core.leases import TaskLeases

log = logging.getLogger(__name__)


class HeldTasks:
    """One loop's record of the claims it holds: a JSON list in one file, after its length.

    Written in place (one ``pwrite`` and an ``ftruncate`` on a descriptor kept open: about
    10 us), not renamed into place (a new file each time: 0.24 ms, twice a job). A process
    killed in the middle of a write leaves a length that does not match: read as no record,
    its tasks are then put back by their leases."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # opened by the writer, in the loop process

    def write(self, claims: Sequence[Claim]) -> None:
        """Record ``claims`` as the ones held now."""
        payload = json.dumps([dataclasses.asdict(claim) for claim in claims]).encode()
        record = b"%d\n%s" % (len(payload), payload)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._fd, record, 0)
            os.ftruncate(self._fd, len(record))
        except OSError as exc:  # the lease still puts a lost task back
            log.warning("could not record the tasks held", extra={"error": str(exc)})

    def take(self) -> list[Claim]:
        """The claims recorded, and the record emptied (truncated, not removed: a writer keeps
        its descriptor)."""
        try:
            record = self.path.read_bytes()
            os.truncate(self.path, 0)
        except FileNotFoundError:
            return []
        if not record:
            return []
        length, _, payload = record.partition(b"\n")
        try:
            if int(length) != len(payload):
                raise ValueError(f"{len(payload)} bytes of {int(length)}")
            return [Claim(**each) for each in json.loads(payload)]
        except (ValueError, TypeError) as exc:
            log.warning("unreadable record of tasks held", extra={"error": str(exc)})
            return []


def fail_lost(held: HeldTasks, exitcode: int | None, leases: TaskLeases) -> int:
    """Fail, retryably, each task a dead loop process held; how many were reported."""
    claims = held.take()
    error = f"the worker's process {_how_it_ended(exitcode)} while it held the task"
    reported = 0
    for claim in claims:
        log.error("task lost with its loop process", extra={"task": claim.task_id, "error": error})
        try:
            leases.fail(claim, error, retryable=True)
            reported += 1
        except Exception as exc:  # finished meanwhile (the lease is gone), or no database
            log.warning(
                "could not report a lost task", extra={"task": claim.task_id, "error": str(exc)}
            )
    return reported


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"
