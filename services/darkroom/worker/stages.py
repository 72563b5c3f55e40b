"""The processing stages of one attempt at a task, timed for its live progress (``/events``).

The task loop and ``process_image`` report each stage done (download, decode, each pipeline
step, encode, store); the stages go to the database in parts, with each heartbeat, and the rest
with the finish or fail call: no exchange of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from darkroom.contract.events import Stage

# stage_done(name, started, ended): a stage is done; its start and end as time.perf_counter()
StageDone = Callable[[str, float, float], None]


def no_stage(name: str, started: float, ended: float) -> None:
    """A StageDone for callers that keep no stages."""


class StageLog:
    """The stages of one attempt, offsets from its claim; safe to use from several threads
    (the loop adds, the heartbeat takes)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._origin = clock()
        self._stages: list[Stage] = []
        self._taken = 0
        self._lock = threading.Lock()

    def add(self, name: str, started: float, ended: float) -> None:
        """A StageDone."""
        stage = Stage(name, _ms(started - self._origin), _ms(ended - started))
        with self._lock:
            self._stages.append(stage)

    def take_new(self) -> tuple[Stage, ...]:
        """The stages added since the last take, oldest first."""
        with self._lock:
            new, self._taken = self._stages[self._taken :], len(self._stages)
        return tuple(new)


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000, 1)
