"""Capped exponential backoff, for any loop that retries: registration, restarts, task loops."""

from __future__ import annotations


class Backoff:
    """Capped exponential delays: 0.1 s, 0.2 s, ... up to ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first
