"""Fail-open and data (issue 13): real ``darkroom serve`` processes on 127.0.0.1.

No internal token means no start (unless the network is said to be trusted); files are the
owner's only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from darkroom.contract.roles import ROLES
from support.images import png_bytes
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e

START_REFUSAL_TIMEOUT = 30.0


def _serve(services: Services, role: str, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "darkroom", "serve", role, "--port", "0"]
    return subprocess.run(
        command,
        env={**services.env, **env},
        capture_output=True,
        text=True,
        timeout=START_REFUSAL_TIMEOUT,
    )


@pytest.mark.parametrize("role", ROLES)
def test_a_role_with_an_empty_token_refuses_to_start(tmp_path: Path, role: str) -> None:
    """An empty token used to turn the internal checks off, silently."""
    services = Services(tmp_path / "data", tmp_path, internal_token="")
    child = _serve(services, role)
    assert child.returncode == 2, child.stderr
    assert "no internal token" in child.stderr and "DARKROOM_TRUSTED_NETWORK" in child.stderr


def test_a_trusted_network_is_said_explicitly(tmp_path: Path) -> None:
    services = Services(tmp_path / "data", tmp_path, internal_token="", trusted_network="1")
    try:
        services.start("database")
        # the internal routes are open, as asked
        assert requests.get(services.url("database", "/list"), timeout=5).status_code == 200
    finally:
        services.stop_all()


def test_files_and_folders_are_the_owners_only(tmp_path: Path) -> None:
    """Data directory 0755 and database 0644 let any local user list ids and read images."""
    old_umask = os.umask(0o022)  # what the roles inherit from a usual shell
    try:
        services = Services(tmp_path / "data", tmp_path)
        services.start_all()
    finally:
        os.umask(old_umask)
    try:
        master = services.url("master")
        task_id = requests.post(f"{master}/new", data=png_bytes(), timeout=10).text
        wait_until(
            lambda: (
                requests.get(f"{master}/isReady", params={"id": task_id}, timeout=5).text == "1"
            ),
            60,
            "the job to finish",
        )
        paths = [services.data_dir, *services.data_dir.rglob("*")]
        assert any(path.name == "tasks.sqlite3" for path in paths)
        assert any(path.name == task_id and path.parent.name == "working" for path in paths)
        loose = {
            str(path.relative_to(tmp_path)): oct(stat.S_IMODE(path.stat().st_mode))
            for path in paths
            if stat.S_IMODE(path.stat().st_mode) & 0o077
        }
        assert loose == {}, "readable or writable by others than the owner"
    finally:
        services.stop_all()
