"""The throw-away PostgreSQL the tests use: it keeps what was committed through a crash, and
where PostgreSQL is missing its tests skip saying why, or fail in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
NEEDS_POSTGRES = """
def test_needs_postgres(postgres_url):
    pass
"""


def test_a_crash_restart_keeps_what_was_committed(postgres_server, postgres_url):
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE kept (n integer)")
        conn.execute("INSERT INTO kept VALUES (1)")
    postgres_server.restart("immediate")  # no checkpoint: recovery replays the WAL
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]


def _run_without_postgres(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_postgres.py"
    test.write_text(NEEDS_POSTGRES)
    env = {**os.environ, "CI": ci, "DARKROOM_POSTGRES_BIN": str(tmp_path / "none")}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(test)]
    # this checkout's settings, and its tests/conftest.py (the fixture under test) as a plugin
    command += ["--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "-p", "conftest"]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT / "tests"
    )


def test_without_postgresql_the_tests_skip_saying_why_or_fail_in_ci(tmp_path):
    skipped = _run_without_postgres(tmp_path, ci="")
    assert skipped.returncode == 0, skipped.stdout
    assert "PostgreSQL 15 is not installed" in skipped.stdout and "1 skipped" in skipped.stdout
    failed = _run_without_postgres(tmp_path, ci="true")
    assert failed.returncode != 0 and "PostgreSQL 15 is not installed" in failed.stdout
