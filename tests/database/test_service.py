"""Starting the database role: a task store it cannot reach is said in one line."""

from __future__ import annotations

import logging

import pytest

from darkroom.database import service
from darkroom.database.store import StoreUnavailable
from harness.launch import free_port


def test_an_unreachable_postgresql_is_one_error_line_and_exit_1(config, caplog):
    """It was a 40-line traceback at every restart by darkroom up."""
    url = f"postgresql://darkroom@127.0.0.1:{free_port()}/darkroom?connect_timeout=5"
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        service.run(config.replace(database_url=url))
    assert exited.value.code == 1
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "task store unreachable"
    assert "Connection refused" in record.error and record.exc_info is None


class AwayStore:
    def expire(self) -> int:
        raise StoreUnavailable("couldn't get a connection after 2.00 sec")


def test_the_lease_sweep_while_postgresql_is_away_is_a_warning_without_traceback(caplog):
    """It logged a 30-line traceback every second of a PostgreSQL restart."""
    with caplog.at_level(logging.WARNING):
        service.sweep_leases(AwayStore())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "couldn't get a connection" in record.error
