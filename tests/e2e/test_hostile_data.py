"""Fail-open and data (issue 13): real ``darkroom serve`` processes on 127.0.0.1.

No internal token means no start (unless the network is said to be trusted); files are the
owner's only.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from darkroom.contract.roles import ROLES
from darkroom.contract.tasks import TaskState
from support.images import png_bytes
from support.processes import Services, free_port, wait_until

# The empty-token and file-mode checks belong to the standing hostile run too (-m hostile).
pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

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


def test_the_database_keeps_threads_free_whatever_the_number_of_pollers(tmp_path: Path) -> None:
    """Two masters' long polls (threads/2 each) took all 32 of the database's threads: uploads
    waited 27-29 s. Here 6 polls and claims meet a database of 4 threads (2 may wait)."""
    services = Services(tmp_path / "data", tmp_path, threads="4", max_wait_seconds="20")
    internal = {"Authorization": f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"}
    database = services.url("database")
    try:
        services.start("registry")
        services.start("database")
        uploading = requests.post(f"{database}/newTask", headers=internal, timeout=5).text

        def watch() -> requests.Response:
            params = {"id": uploading, "wait": "20", "state": "uploading"}
            return requests.get(f"{database}/getById", params=params, headers=internal, timeout=30)

        def claim() -> requests.Response:
            params = {"wait": "20"}
            return requests.post(
                f"{database}/getNewTask", params=params, headers=internal, timeout=30
            )

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            polls = [pool.submit(call) for call in (watch, claim) * 3]
            answered = wait_until(
                lambda: (
                    [poll.result() for poll in polls if poll.done()]
                    if sum(poll.done() for poll in polls) >= 4
                    else None
                ),
                10,
                "the polls beyond the slots to be answered at once",
            )
            started = time.monotonic()
            created = requests.post(f"{database}/newTask", headers=internal, timeout=10)
            took = time.monotonic() - started
            assert created.status_code == 201 and took < 2, f"a new task took {took:.1f} s"
            statuses = sorted(answer.status_code for answer in answered)
            assert set(statuses) <= {200, 503} and 503 in statuses, statuses
            for answer in answered:
                if answer.status_code == 503:
                    assert answer.headers["Retry-After"] == "1"  # the worker backs off
            # the waiting watch and claim both end with this
            enqueue = {"id": uploading}
            requests.post(f"{database}/enqueueTask", params=enqueue, headers=internal, timeout=5)
    finally:
        services.stop_all()


def _state(services: Services, task_id: str) -> str:
    status = requests.get(services.url("master", "/status"), params={"id": task_id}, timeout=5)
    return status.json()["stateName"]


def _freeze_while_claiming(services: Services, frozen_worker) -> str:
    """Freeze the worker while its claim long-polls, then submit a job: the claim takes it, so
    the worker is frozen holding a lease. A few tries: the freeze may fall between two polls."""
    for _ in range(3):
        os.kill(frozen_worker.pid, signal.SIGSTOP)
        task_id = requests.post(services.url("master", "/new"), data=png_bytes(), timeout=10).text
        try:
            wait_until(lambda: _state(services, task_id) == TaskState.IN_PROGRESS, 3, "the claim")  # noqa: B023
            return task_id
        except AssertionError:
            os.kill(frozen_worker.pid, signal.SIGCONT)  # it was between polls: let it do that job
            wait_until(lambda: _state(services, task_id) == TaskState.FINISHED, 30, "that job")  # noqa: B023
    raise AssertionError("could not freeze the worker during a claim")


def test_a_frozen_worker_resumed_after_another_finished_never_replaces_the_result(
    tmp_path: Path,
) -> None:
    """SIGSTOP after claiming, SIGCONT after another worker finished: /get then served the
    stale worker's bytes, stored over the finished result."""
    services = Services(tmp_path / "data", tmp_path, lease_seconds="2")
    frozen = None
    try:
        for role in ("registry", "database", "storage", "master"):
            services.start(role)
        services.start("worker", worker_mode="thread", concurrency="1")
        frozen = services.processes.pop("worker")
        task_id = _freeze_while_claiming(services, frozen)

        services.ports["worker"] = free_port()  # a second worker beside the frozen one
        services.start("worker", worker_mode="thread", concurrency="1")
        wait_until(lambda: _state(services, task_id) == TaskState.FINISHED, 30, "the other worker")
        finished = services.data_dir / "finished"
        served = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=5)
        before = {path.name: path.stat().st_ino for path in finished.iterdir()}

        def leases_lost() -> int:
            return frozen.log_path.read_text().count("lease lost")

        lost_before = leases_lost()
        os.kill(frozen.pid, signal.SIGCONT)
        # it stores its result, then cannot finish
        wait_until(lambda: leases_lost() > lost_before, 30, "the resumed worker to give up")
        after = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=5)
        assert after.status_code == 200 and after.content == served.content
        now = {path.name: path.stat().st_ino for path in finished.iterdir()}
        assert {name: now.get(name) for name in before} == before, "the result was replaced"
        assert len(now) == len(before) + 1, "the stale result is kept under its own version"
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
            frozen.stop(30)
        services.stop_all()
