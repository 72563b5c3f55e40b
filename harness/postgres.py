"""A throw-away PostgreSQL 15 server for tests and benchmarks: ``initdb`` and ``pg_ctl`` in a
temporary directory, on a free 127.0.0.1 port, deleted when stopped.

PostgreSQL refuses to run as root: as root the directory is given to ``nobody`` and every
command runs through ``runuser -u nobody --``; otherwise it runs as the caller. ``fsync`` stays
on, so ``restart()`` (the chaos test's) keeps every committed row.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from harness.launch import HOST, free_port
from harness.proc import cpu_seconds

# Debian's PostgreSQL 15 server programs; DARKROOM_POSTGRES_BIN names another version's
BIN_DIR = Path(os.environ.get("DARKROOM_POSTGRES_BIN") or "/usr/lib/postgresql/15/bin")
UNPRIVILEGED_USER = "nobody"
SUPERUSER = "darkroom"
START_TIMEOUT = 60


class PostgresMissing(RuntimeError):
    """PostgreSQL 15's server programs are missing (Debian: ``apt-get install postgresql``)."""


def available() -> bool:
    return (BIN_DIR / "initdb").exists() and (BIN_DIR / "pg_ctl").exists()


class PostgresServer:
    """One server; ``url(database)`` is a libpq URL for one of its databases."""

    def __init__(self, parent: Path | None = None) -> None:
        if not available():
            raise PostgresMissing(f"no {BIN_DIR}/initdb: install Debian's postgresql package")
        self.root = Path(tempfile.mkdtemp(prefix="darkroom-pg-", dir=parent))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        self.socket_dir.mkdir()
        if self._as_root:
            self.root.chmod(0o755)  # nobody must reach its own subdirectories
            shutil.chown(self.root, UNPRIVILEGED_USER)
            shutil.chown(self.socket_dir, UNPRIVILEGED_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",  # reachable only on 127.0.0.1 and a private socket directory
            "--encoding=UTF8",
            "--no-instructions",
        )

    def _run(self, program: str, *args: str) -> None:
        command: Sequence[str] = [str(BIN_DIR / program), *args]
        if self._as_root:
            command = ["runuser", "-u", UNPRIVILEGED_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        options = (
            f"-h {HOST} -p {self.port} -k {self.socket_dir}"
            " -c max_connections=300 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT),
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session and checkpoints; ``immediate`` is a crash (recovery at the
        next start replays the WAL)."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop (if running) and delete everything."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server: the postmaster, its live processes (one per
        connection) and the ones that have ended."""
        import psutil

        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        own = postmaster.cpu_times()
        used = own.user + own.system + own.children_user + own.children_system
        return used + sum(cpu_seconds(child.pid) for child in postmaster.children())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{urllib.parse.quote(database)}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg  # the harness needs it only where PostgreSQL runs

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending its sessions: its files then cost the next checkpoint nothing."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
