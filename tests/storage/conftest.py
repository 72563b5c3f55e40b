"""A live writer in another process, as a storage replica's upload in progress looks on disk."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HOLD_LOCKED = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold_locked() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """``hold_locked(path)`` creates ``path`` locked by another process; call the result to end
    that process (the kernel then drops its lock, as when a replica dies)."""
    holders: list[subprocess.Popen[str]] = []

    def end(holder: subprocess.Popen[str]) -> None:
        if holder.poll() is None:
            holder.communicate(timeout=10)

    def hold(path: Path) -> Callable[[], None]:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCKED, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        return lambda: end(holder)

    yield hold
    for holder in holders:
        end(holder)
