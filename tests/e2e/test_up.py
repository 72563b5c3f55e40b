"""``darkroom up`` as a user runs it: a port taken, the supervisor killed, Ctrl-C mid-work."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from darkroom.contract.roles import ROLES
from harness.environment import service_env, up_command
from harness.launch import HOST, Launched, free_port, wait_until
from support.images import png_bytes

pytestmark = pytest.mark.e2e

START_TIMEOUT = 60.0
# Long enough on a loaded two-core machine that the drain below gives both jobs back.
SLOW_PIPELINE = "resize:4000x3000," + "blur:50,sharpen," * 4 + "blur:50"  # ten steps: the most
DRAIN_SECONDS = 2.0
CLAIM_WAIT_SECONDS = 2.0


class Up:
    """One ``darkroom up`` with its own ports; output (JSON lines: not a terminal) in a file."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        self.data_dir = tmp_path / "data"
        self.log_dir = tmp_path
        self.ports = {role: free_port() for role in ROLES}
        self.env = service_env(**settings)
        self.runs: list[Launched] = []

    def start(self, *args: str, wait: bool = True) -> Launched:
        command = up_command(self.data_dir, self.ports, 2, args)
        log_path = self.log_dir / f"up-{len(self.runs)}.log"
        run = Launched("darkroom up", command, self.env, log_path)
        self.runs.append(run)
        if wait:
            run.wait_for_log("Darkroom is up", START_TIMEOUT)
        return run

    def url(self, role: str, path: str) -> str:
        return f"http://{HOST}:{self.ports[role]}{path}"

    def status(self, task_id: str) -> dict:
        response = requests.get(self.url("master", "/status"), params={"id": task_id}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def stop_all(self) -> None:
        for run in self.runs:
            if run.process.poll() is None:
                kill_tree(run.process.pid)


def kill_tree(pid: int) -> None:
    try:
        tree = psutil.Process(pid)
        processes = [tree, *tree.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def up(tmp_path) -> Iterator[Up]:
    running = Up(
        tmp_path,
        drain_seconds=str(DRAIN_SECONDS),
        claim_wait_seconds=str(CLAIM_WAIT_SECONDS),
        discovery_ttl_seconds="1",
    )
    try:
        yield running
    finally:
        running.stop_all()


def test_a_taken_port_stops_up_at_once_naming_port_and_holder(up):
    """It printed "Darkroom is up" (the other instance answered) and looped on the bind error."""
    with socket.socket() as holder:
        holder.bind((HOST, up.ports["master"]))
        holder.listen()
        run = up.start(wait=False)
        started = time.monotonic()
        code = run.process.wait(10)
    output = run.log_path.read_text()
    assert code != 0 and time.monotonic() - started < 10
    port = up.ports["master"]
    assert f"port {port} (master) is taken by pid {os.getpid()} (" in output
    assert "pytest" in output or sys.executable in output  # the holder's command line
    assert "Darkroom is up" not in output


def test_text_logs_and_a_banner_pointing_at_the_api_description(up):
    """Logs were JSON on a terminal too; the banner named routes, not /openapi.json."""
    run = up.start("--log-format", "text")
    output = run.log_path.read_text()
    api = up.url("master", "/openapi.json")
    assert f"API       {api}" in output
    assert requests.get(api, timeout=10).json()["openapi"].startswith("3.")
    lines = output.splitlines()
    assert f"master INFO serving address={HOST}:{up.ports['master']}" in [
        line.split(" ", 1)[1] for line in lines if line[:2].isdigit()
    ]
    assert not any(line.startswith("{") for line in lines)  # the children write text too
    assert "route=/get " not in output  # look-ups in the registry are DEBUG


def test_children_exit_when_up_is_killed(up):
    """SIGKILLed, the supervisor used to leave every role serving, orphaned."""
    run = up.start()
    supervisor = psutil.Process(run.pid)
    wait_until(lambda: len(supervisor.children(recursive=True)) >= len(ROLES) + 2, 30, "loops")
    children = supervisor.children(recursive=True)
    supervisor.kill()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [process.pid for process in alive]


def test_ctrl_c_drains_and_the_jobs_finish_later_with_no_attempt_spent(up):
    """Ctrl-C took 16 s, warned "storage not reachable", and cost both jobs an attempt."""
    run = up.start()
    jobs = [_upload(up, SLOW_PIPELINE) for _ in range(2)]
    wait_until(
        lambda: all(up.status(job)["stateName"] == "in progress" for job in jobs),
        30,
        "both jobs claimed",
        interval=0.2,
    )
    time.sleep(0.5)  # well into processing, which takes longer than the drain
    run.process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert run.process.wait(DRAIN_SECONDS + CLAIM_WAIT_SECONDS + 10) == 0
    assert time.monotonic() - started < DRAIN_SECONDS + CLAIM_WAIT_SECONDS + 5
    output = run.log_path.read_text()
    assert '"message": "stopped"' in output.splitlines()[-1]
    assert "reachable" not in output and "killed" not in output
    assert output.count("task given back") == 2

    up.start()
    for job in jobs:
        task = wait_until(lambda job=job: _finished(up, job), 120, f"job {job}", interval=0.5)
        assert task["attempts"] == 1 and not task["error"], task


def _upload(up: Up, pipeline: str) -> str:
    body = png_bytes((400, 300), "RGB")
    params = {"op": pipeline}
    response = requests.post(up.url("master", "/new"), params=params, data=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _finished(up: Up, job: str) -> dict | None:
    task = up.status(job)
    assert task["stateName"] != "failed", task
    return task if task["stateName"] == "finished" else None
