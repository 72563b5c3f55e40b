"""Slots for long polls: each waiting request holds a server thread, so only so many may wait.

Beyond that, a request with ``wait`` is answered at once, as without it: the caller asks again,
which always works, and the threads stay free for everything else. Every role that lets
requests wait uses one (the master for its clients, the frontend for the polls it relays, the
database for every master's polls and every worker's claims), so no number of callers can
take all of a role's threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class LongPolls:
    def __init__(self, slots: int) -> None:
        self._slots = threading.BoundedSemaphore(max(slots, 1))

    @contextlib.contextmanager
    def wait(self, seconds: float) -> Iterator[float]:
        """How long this request may wait: ``seconds`` with a free slot, else 0."""
        if seconds <= 0 or not self._slots.acquire(blocking=False):
            yield 0.0
            return
        try:
            yield seconds
        finally:
            self._slots.release()
