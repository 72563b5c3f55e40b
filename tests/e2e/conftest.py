"""Fixtures for end-to-end tests: the real services as processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.processes import Services


@pytest.fixture
def services(tmp_path) -> Iterator[Services]:
    running = Services(tmp_path / "data", tmp_path, lease_seconds="3", concurrency="2")
    try:
        yield running
    finally:
        running.stop_all()
