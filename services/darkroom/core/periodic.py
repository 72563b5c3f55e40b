"""Housekeeping that runs every so often in the background of a service."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_periodically(
    action: Callable[[], object], every_seconds: float, stop: threading.Event, name: str
) -> threading.Thread:
    """Call ``action()`` now and every ``every_seconds`` until ``stop``; failures are logged."""

    def run() -> None:
        while True:
            try:
                action()
            except Exception:
                log.exception("periodic task failed", extra={"task": name})
            if stop.wait(every_seconds):
                return

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def expire_periodically(
    purge: Callable[[float], int],
    retention_seconds: float,
    every_seconds: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.time,
) -> threading.Thread:
    """Call ``purge(cutoff)`` now and every ``every_seconds``; a failure waits for the next turn."""

    def expire() -> None:
        removed = purge(clock() - retention_seconds)
        if removed:
            log.info("expired old jobs", extra={"removed": removed})

    return run_periodically(expire, every_seconds, stop, "expiry")
