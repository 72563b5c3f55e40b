"""Jobs this master knows have not ended, kept true by following the database's feed of ended
tasks, so that ``/isReady`` for a job still running is answered from memory.

A client polling every 20 ms asked the database about six times a job, each poll two
exchanges of a millisecond of CPU or more (docs/benchmarks.md). Now the master reads a job once,
remembers it unfinished, and forgets it when the feed (``GET /endedTasks``, long-polled by one
thread) says it ended; a finished one goes to ``FinishedTasks`` with its result's version, so
``/isReady`` and ``/get`` need no read either.

What keeps the answers right:

* A job is remembered only from a read (or its upload) made after the feed was followed from a
  position (``mark``), and not if the feed said it ended after that position: an end the read
  missed is one the feed has. The feed starting over (another database process, a lost
  PostgreSQL listener) or failing forgets everything: the polls read the database again, as
  without a feed, until it is followed again.
* A remembered job is trusted for ``trust_seconds`` only, then read again: however the feed
  might fall silent without failing, an answer from memory is at most that old. Leases and
  uploads that run out end their tasks when the database's sweep writes them (every second),
  which the feed then tells.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from darkroom.contract.tasks import EndedTasks, TaskState
from darkroom.core.backoff import Backoff
from darkroom.database.client import DatabaseClient
from darkroom.master.finished import FinishedTasks

log = logging.getLogger(__name__)

# Ends kept to tell a read that began before one (a read takes milliseconds): at 1,000 jobs/s,
# 10 s of them. A read older than the oldest kept is not remembered.
RECENT_ENDS = 10_000


@dataclasses.dataclass(frozen=True)
class FeedMark:
    """Where the feed was followed to when a read began."""

    generation: int
    position: int


class UnfinishedTasks:
    def __init__(
        self,
        database: DatabaseClient,
        finished: FinishedTasks,
        stop: threading.Event,
        *,
        wait_seconds: float = 10.0,
        trust_seconds: float = 5.0,
        capacity: int = 100_000,
        recent_ends: int = RECENT_ENDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._finished = finished
        self._stop = stop
        self._wait_seconds = wait_seconds
        self._trust_seconds = trust_seconds
        self._capacity, self._recent_ends = capacity, recent_ends
        self._clock = clock
        self._changed = threading.Condition()
        self._following = False
        self._generation = 0  # a new one each time the feed starts over or fails
        self._epoch: str | None = None
        self._position = 0
        # job id -> when its memory stops being trusted
        self._unfinished: collections.OrderedDict[str, float] = collections.OrderedDict()
        # job id -> the feed position of its end, for the last ``recent_ends`` ends
        self._ended: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._ended_before = 0  # ends at or before this position are forgotten
        self._thread: threading.Thread | None = None
        self._closing = False

    # -- what the routes ask ------------------------------------------------------------
    @property
    def following(self) -> bool:
        return self._following

    def mark(self) -> FeedMark | None:
        """Where the feed is now; take it before reading a job. None when not following."""
        with self._changed:
            return FeedMark(self._generation, self._position) if self._following else None

    def remember(self, task_id: str, mark: FeedMark | None) -> None:
        """``task_id`` was unfinished in a read that began at ``mark``."""
        with self._changed:
            if (
                mark is None
                or mark.generation != self._generation
                or mark.position < self._ended_before
                or self._ended.get(task_id, -1) > mark.position
            ):
                return  # followed afresh since, or the feed may have told its end since
            self._unfinished[task_id] = self._clock() + self._trust_seconds
            self._unfinished.move_to_end(task_id)
            while len(self._unfinished) > self._capacity:
                self._unfinished.popitem(last=False)

    def still_running(
        self, task_id: str, wait_seconds: float = 0.0, departed: Callable[[], bool] | None = None
    ) -> bool:
        """Whether ``task_id`` is known not to have ended, waiting up to ``wait_seconds`` for
        the feed to say it did (no longer once ``departed()``: the client left, and the
        thread is wanted). False also when it is not known (read it)."""
        deadline = self._clock() + wait_seconds
        with self._changed:
            while True:
                trusted_until = self._unfinished.get(task_id)
                now = self._clock()
                if trusted_until is None or now >= trusted_until:
                    self._unfinished.pop(task_id, None)
                    return False
                remaining = min(deadline, trusted_until) - now
                if remaining <= 0 or self._closing or (departed is not None and departed()):
                    return True
                self._changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        """The master is stopping: waiting polls are answered within half a second. Only sets
        a flag: it is called from a signal handler."""
        self._closing = True

    # -- following the feed -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ended-tasks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = Backoff(cap=5.0)
        while not self._stop.is_set():
            try:
                answer = self._database.ended_tasks(self._epoch, self._position, self._wait_seconds)
            except Exception as exc:  # the database is away or answered an error
                delay = backoff.next()
                log.log(
                    logging.WARNING if self._lost() else logging.DEBUG,
                    "ended-task feed lost; polls read the database",
                    extra={"error": getattr(exc, "description", None) or str(exc)},
                )
                self._stop.wait(delay)
                continue
            backoff.reset()
            self.take(answer)

    def take(self, answer: EndedTasks) -> None:
        """One answer of the feed: where it starts afresh, or the jobs that ended."""
        with self._changed:
            if answer.reset or answer.epoch != self._epoch:
                self._forget()
                self._ended_before = answer.position
            else:
                first = answer.position - len(answer.ended) + 1
                for position, task in enumerate(answer.ended, start=first):
                    self._ended_at(task.task_id, position)
                    followed = self._unfinished.pop(task.task_id, None) is not None
                    if followed and task.state == TaskState.FINISHED:
                        self._finished.just_finished(task.task_id, task.result)
            self._epoch, self._position = answer.epoch, answer.position
            self._following = True
            self._changed.notify_all()

    def _ended_at(self, task_id: str, position: int) -> None:
        self._ended[task_id] = position
        self._ended.move_to_end(task_id)
        while len(self._ended) > self._recent_ends:
            _, self._ended_before = self._ended.popitem(last=False)

    def _lost(self) -> bool:
        """Stop answering from memory; whether it was (one warning per outage)."""
        with self._changed:
            if not self._following:
                return False
            self._following = False
            self._forget()
            self._changed.notify_all()
            return True

    def _forget(self) -> None:
        self._generation += 1
        self._unfinished.clear()
        self._ended.clear()
