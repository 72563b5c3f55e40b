"""When to start again a process that exited: one policy for ``darkroom up`` and worker loops.

Quick deaths back off exponentially; a process that ran ``stable_seconds`` before dying is
started again at once (its crash was not a start-up problem). After ``give_up_after`` quick
deaths in a row the policy gives up, so a child that can never start (a port taken, a bad
setting) is reported instead of restarted forever.
"""

from __future__ import annotations

import time

from darkroom.core.discovery import Backoff


class RestartPolicy:
    def __init__(
        self,
        first: float = 0.5,
        cap: float = 10.0,
        stable_seconds: float = 10.0,
        give_up_after: int | None = None,
    ) -> None:
        self._backoff = Backoff(first=first, cap=cap)
        self._stable_seconds = stable_seconds
        self._give_up_after = give_up_after
        self._started_at = 0.0
        self.quick_deaths = 0

    def started(self, now: float | None = None) -> None:
        self._started_at = time.monotonic() if now is None else now

    def delay_after_exit(self, now: float | None = None) -> float | None:
        """Seconds to wait before the next start, or None to give up."""
        now = time.monotonic() if now is None else now
        if now - self._started_at >= self._stable_seconds:
            self._backoff.reset()
            self.quick_deaths = 0
        self.quick_deaths += 1
        if self._give_up_after is not None and self.quick_deaths >= self._give_up_after:
            return None
        return self._backoff.next()
