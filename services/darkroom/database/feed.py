"""The feed of ended tasks: which tasks ended, numbered in the order this process learnt of it.

A master follows it to answer ``/isReady`` for jobs still running from memory instead of with
a database read per poll (docs/benchmarks.md). It is kept in memory only: a database process
that starts again, or a PostgreSQL listener that reconnects, begins a new epoch, and a
follower of the old one is told to start over (``EndedTasks.reset``).
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Iterable

from darkroom.contract.tasks import EndedTask, EndedTasks

# Ends remembered for followers that fell behind: at 1,000 jobs/s, 10 s of them.
FEED_CAPACITY = 10_000
# At most this many in one answer: a follower far behind asks again from the last one.
ENDS_PER_ANSWER = 1_000


class EndedFeed:
    def __init__(self, capacity: int = FEED_CAPACITY) -> None:
        self._entries: collections.deque[EndedTask] = collections.deque(maxlen=capacity)
        self._position = 0  # the number of the newest entry
        self._epoch = secrets.token_hex(8)
        self._changed = threading.Condition()
        self._closing = False

    def close(self) -> None:
        """The process is stopping: waiting followers are answered within half a second (a
        follower's wait would hold a server thread past the stop). Only sets a flag: it is
        called from a signal handler."""
        self._closing = True

    def add(self, ended: Iterable[EndedTask]) -> None:
        with self._changed:
            for task in ended:
                self._entries.append(task)
                self._position += 1
            self._changed.notify_all()

    def reset(self) -> None:
        """Ends may have been missed (a lost PostgreSQL listener): a new epoch begins."""
        with self._changed:
            self._entries.clear()
            self._position = 0
            self._epoch = secrets.token_hex(8)
            self._changed.notify_all()

    def after(self, epoch: str | None, position: int, wait_seconds: float = 0.0) -> EndedTasks:
        """The tasks that ended after ``position`` of ``epoch``; with ``wait_seconds``, waits up
        to that long for one. Without an epoch (a new follower), or another one, or a position
        older than the entries kept: where the feed is now, as a reset."""
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            while True:
                oldest = self._position - len(self._entries)
                if epoch != self._epoch or not oldest <= position <= self._position:
                    return EndedTasks(self._epoch, self._position, reset=True)
                remaining = deadline - time.monotonic()
                if position < self._position or remaining <= 0 or self._closing:
                    return self._answer(position)
                self._changed.wait(min(remaining, 0.5))

    def _answer(self, position: int) -> EndedTasks:
        """The entries after ``position`` (kept, and in this epoch), at most ENDS_PER_ANSWER."""
        last = min(self._position, position + ENDS_PER_ANSWER)
        # the entry numbered n is at index n - 1 - oldest; indexing a deque near its end is cheap
        start = position - (self._position - len(self._entries))
        ended = tuple(self._entries[index] for index in range(start, start + last - position))
        return EndedTasks(self._epoch, last, ended)
