"""Fixtures every test may use."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from darkroom.core.config import Config
from harness import postgres
from support.images import png_bytes

_databases = itertools.count(1)


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path, lease_seconds=5.0, max_upload_bytes=1024 * 1024)


@pytest.fixture
def png() -> bytes:
    return png_bytes()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    """One throw-away PostgreSQL 15 for the session; skipped where it is not installed, except
    in CI (``CI=true``), where a missing PostgreSQL fails the tests that need it."""
    if not postgres.available():
        reason = (
            f"PostgreSQL 15 is not installed (no {postgres.BIN_DIR}/initdb; Debian:"
            " apt-get install postgresql): the PostgreSQL tests did not run"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = postgres.PostgresServer()  # in /tmp: pytest's own tmp is private to its user
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A new, empty database on the session's server: its URL; dropped after the test."""
    name = f"test_{next(_databases)}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


# A live writer in another process, as a storage replica's upload in progress looks on disk.
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
