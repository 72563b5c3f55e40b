"""Starting the database role: a task store it cannot reach is said in one line."""

from __future__ import annotations

import logging

import pytest

from darkroom.database import service
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
