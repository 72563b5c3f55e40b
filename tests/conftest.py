"""Fixtures every test may use."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

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
