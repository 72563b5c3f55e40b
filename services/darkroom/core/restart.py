"""When to start again a process that exited: one policy for ``darkroom up`` and worker loops.

Quick deaths back off exponentially; a process that ran ``stable_seconds`` before dying is
started again at once (its crash was not a start-up problem). After ``give_up_after`` quick
failures in a row the policy gives up, so a child that can never start (a port taken, a bad
setting) is reported instead of restarted forever. A process killed from outside (a signal:
the OOM killer, an operator) has not failed: it backs off but is never given up on.
"""

from __future__ import annotations

import time

from darkroom.core.backoff import Backoff


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
        self.quick_failures = 0

    def started(self, now: float | None = None) -> None:
        self._started_at = time.monotonic() if now is None else now

    def delay_after_exit(self, now: float | None = None, failed: bool = True) -> float | None:
        """Seconds to wait before the next start, or None to give up.

        ``failed``: the process exited by itself with an error, rather than being killed.
        """
        now = time.monotonic() if now is None else now
        if now - self._started_at >= self._stable_seconds:
            self._backoff.reset()
            self.quick_failures = 0
        self.quick_failures += failed
        if self._give_up_after is not None and self.quick_failures >= self._give_up_after:
            return None
        return self._backoff.next()
