"""Jobs this master knows are finished, so that ``/isReady`` and ``/get`` need not ask again."""

from __future__ import annotations

import collections
import datetime
import threading
import time
from collections.abc import Callable

# How long before the retention could remove a job a remembered one is forgotten: the result
# file is stored a moment before the task is finished, and the storage ages files by their own
# time, so the file may go slightly before the record (docs/architecture.md, "Retention").
RETENTION_MARGIN_SECONDS = 600.0


class FinishedTasks:
    """Finished tasks and their result versions, each remembered for at most ``max_age``.

    A finished task never changes again, so this saves one or two database calls per job
    (docs/benchmarks.md). Only finished is remembered: a failed task may be retried, any other
    state moves on. A task is never remembered past ``RETENTION_MARGIN_SECONDS`` before its
    retention ends, so no answer from here outlives the job: it is there with its file or gone.
    """

    def __init__(
        self,
        retention_seconds: float,
        max_age: float = 60.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._retention = retention_seconds
        self._max_age, self._capacity = max_age, capacity
        self._clock, self._wall_clock = clock, wall_clock
        # task id -> (result version, monotonic time it is forgotten at)
        self._known: collections.OrderedDict[str, tuple[str | None, float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def just_finished(self, task_id: str, version: str | None) -> None:
        """``task_id`` was finished a moment ago (its retention has just begun)."""
        self._remember(task_id, version, self._retention)

    def seen(self, task: dict) -> None:
        """A task document read from the database: remembered if it is finished."""
        finished_at = _epoch(task.get("finishedAt"))
        if task.get("stateName") != "finished" or finished_at is None:
            return
        left = finished_at + self._retention - self._wall_clock()
        self._remember(task["id"], task.get("result"), left)

    def finished_just_now(self, task: dict) -> bool:
        """Whether ``task``, a document read from the database, was finished less than
        ``max_age`` ago with its retention far from over: its result, stored just before the
        finish, is trusted to be there as a finish this master relayed is (``just_finished``),
        without asking the storage. Workers finish at the database, so a master learns of a
        finish from such a read (docs/benchmarks.md)."""
        finished_at = _epoch(task.get("finishedAt"))
        if task.get("stateName") != "finished" or finished_at is None:
            return False
        age = self._wall_clock() - finished_at
        return age < self._max_age and self._retention - age > RETENTION_MARGIN_SECONDS

    def version(self, task_id: str) -> tuple[bool, str | None]:
        """(known finished, its result version)."""
        with self._lock:
            known = self._known.get(task_id)
            if known is None:
                return False, None
            if self._clock() >= known[1]:
                del self._known[task_id]
                return False, None
            return True, known[0]

    def _remember(self, task_id: str, version: str | None, retention_left: float) -> None:
        lifetime = min(self._max_age, retention_left - RETENTION_MARGIN_SECONDS)
        if lifetime <= 0:
            return
        with self._lock:
            self._known[task_id] = (version, self._clock() + lifetime)
            self._known.move_to_end(task_id)
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)


def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return datetime.datetime.fromisoformat(timestamp).timestamp()
