"""The standing hostile-traffic test (``-m hostile``): issue 13's attacks against every role as
real processes on 127.0.0.1, each bounded in count and time (the module takes about a minute).

After each attack the probes (every role's health port) answer within a second; at the end no
role restarted (same processes, same task-loop processes), their peak RSS stayed bounded, and
every accepted job finished or failed with a reason. The figures are the README's ("What
Darkroom guarantees").
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import socket
import string
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
import requests
from PIL import Image

from support import jobs
from support.images import png_bytes
from support.openfiles import open_files_for
from support.processes import HOST, PROBE_SECONDS, Services, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

ROLES = ("registry", "database", "storage", "master", "worker", "frontend")
TRICKLING_CONNECTIONS = 1000
IDLE_CONNECTIONS = 1100  # past select()'s 1024 descriptors
RANDOM_METHODS = 2000
# The test's own descriptors: a flood plus its files, within the hard limit.
# Short, so the trickling connections are cut while the test watches.
REQUEST_HEADER_SECONDS = 3
# Every role's peak RSS stays under this (the worker's task loops each too): a rotate bomb
# alone took a worker to 1.6 GB.
MAX_RSS_BYTES = 200 * 1024 * 1024
JOB_SECONDS = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("hostile-traffic")
    running = Services(
        root / "data",
        root,
        api_keys="",
        http_timeout_seconds="30",
        request_header_seconds=str(REQUEST_HEADER_SECONDS),
        concurrency="2",
        lease_seconds="6",
    )
    try:
        running.start_with_health_ports(ROLES)
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def probes(stack) -> Callable[[], None]:
    """Asserts every role's /healthz and /readyz, on its health port, answer within a second."""
    return stack.assert_probes_answer


@pytest.fixture(scope="module")
def started(stack) -> dict[str, int]:
    """Each role's process id and the worker's task-loop processes when the attacks begin."""
    wait_until(lambda: len(task_loops(stack)) == 2, 30, "the worker's two task loops")
    pids = {role: stack.processes[role].process.pid for role in ROLES}
    return {**pids, **{f"loop-{pid}": pid for pid in task_loops(stack)}}


@pytest.fixture(scope="module")
def accepted() -> list[str]:
    """Every job id the master accepted during the attacks."""
    return []


@pytest.fixture(scope="module", autouse=True)
def open_files() -> Iterator[None]:
    with open_files_for(IDLE_CONNECTIONS + 200):
        yield


def task_loops(stack: Services) -> list[int]:
    worker = psutil.Process(stack.processes["worker"].process.pid)
    # spawned task loops run spawn_main; the resource tracker is a child too
    loops = [child for child in worker.children() if "spawn_main" in " ".join(child.cmdline())]
    return sorted(child.pid for child in loops)


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def upload(stack: Services, body: bytes, accepted: list[str], **params: str) -> str:
    task_id = jobs.upload(stack, body, **params)
    accepted.append(task_id)
    return task_id


def wait_done(stack: Services, task_id: str) -> dict:
    return jobs.wait_state(stack, task_id, "finished", "failed", timeout=JOB_SECONDS)


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_trickling_connections_leave_probes_answering_and_are_cut(stack, probes, started):
    # issue 13: 1,000 connections trickling a byte every 20 s locked everyone out, probes too
    with contextlib.ExitStack() as held:
        trickling = [
            held.enter_context(socket.create_connection((HOST, stack.ports["master"]), timeout=10))
            for _ in range(TRICKLING_CONNECTIONS)
        ]
        began = time.monotonic()
        for byte in b"GET /healthz":
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.sendall(bytes([byte]))
            probes()
            if time.monotonic() - began > REQUEST_HEADER_SECONDS + 2:
                break
            time.sleep(0.5)  # a slow client's pace, far faster than the attack's

        def all_cut() -> bool:
            return all(closed(sock) for sock in trickling[:: TRICKLING_CONNECTIONS // 20])

        wait_until(all_cut, REQUEST_HEADER_SECONDS + 10, "the trickling connections to be cut")
    assert requests.get(stack.url("master", "/healthz"), timeout=PROBE_SECONDS).ok


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_an_idle_flood_leaves_probes_answering(stack, probes, started):
    with contextlib.ExitStack() as held:
        address = (HOST, stack.ports["frontend"])
        for _ in range(IDLE_CONNECTIONS):
            held.enter_context(socket.create_connection(address, timeout=10))
        frontend = stack.processes["frontend"].process.pid
        accepted_all = lambda: len(os.listdir(f"/proc/{frontend}/fd")) > IDLE_CONNECTIONS  # noqa: E731
        wait_until(accepted_all, 30, "the frontend accepting the flood", 0.1)
        probes()
        assert requests.get(stack.url("frontend", "/healthz"), timeout=PROBE_SECONDS).ok


def test_random_methods_leave_the_metrics_small(stack, probes, started):
    # issue 13: 6,000 made-up methods grew the master to 239 MB and a 130 MB /metrics
    randomly = random.Random(13)
    request = b"%s /healthz HTTP/1.1\r\nHost: darkroom\r\n\r\n"
    with socket.create_connection((HOST, stack.ports["master"]), timeout=10) as sock:
        for batch in range(RANDOM_METHODS // 100):
            methods = ["".join(randomly.choices(string.ascii_uppercase, k=12)) for _ in range(100)]
            sock.sendall(b"".join(request % method.encode() for method in methods))
            if batch % 5 == 0:
                probes()
    metrics = requests.get(stack.url("master", "/metrics"), timeout=10)
    assert metrics.ok
    assert len(metrics.content) < 200_000


def test_bombs_and_encoder_limits_fail_once_with_the_reason(stack, probes, started, accepted):
    # issue 13: a 2 KB PNG turned 45 degrees took a worker to 1.6 GB; WebP's 16383 px side
    # was retried three times
    rotate_bomb = upload(stack, encoded(Image.new("L", (20_000, 100))), accepted, op="rotate:45")
    too_wide = upload(stack, encoded(Image.new("L", (16_384, 2))), accepted, op="webp")
    probes()
    for task_id, reason in (
        (rotate_bomb, "rotate:45 would make a 14214x14214 image"),
        (too_wide, "cannot be written as webp"),
    ):
        task = wait_done(stack, task_id)
        assert task["stateName"] == "failed"
        assert reason in task["error"]
        assert task["attempts"] == 1, task  # not retried


def test_a_frozen_worker_leaves_every_job_ending(stack, probes, started, accepted):
    loops = task_loops(stack)
    ids = [upload(stack, png_bytes((40, 30), seed=n), accepted) for n in range(6)]
    for pid in loops:
        os.kill(pid, signal.SIGSTOP)
    try:
        probes()  # the worker's own listener is in its parent process
        time.sleep(2)  # frozen while holding claims: the leases run on
    finally:
        for pid in loops:
            os.kill(pid, signal.SIGCONT)
    for task_id in ids:
        task = wait_done(stack, task_id)
        assert task["stateName"] == "finished" or task["error"], task


def test_no_role_restarted_memory_stayed_bounded_every_job_ended(stack, probes, started, accepted):
    probes()
    for role in ROLES:
        process = stack.processes[role].process
        assert process.poll() is None, f"{role} exited with {process.returncode}"
        assert process.pid == started[role], f"{role} restarted"
    assert task_loops(stack) == sorted(v for k, v in started.items() if k.startswith("loop-"))
    for name, pid in started.items():
        assert peak_rss_bytes(pid) < MAX_RSS_BYTES, f"{name}: {peak_rss_bytes(pid)} bytes"
    assert accepted, "no job was accepted"
    for task_id in accepted:
        task = wait_done(stack, task_id)
        assert task["stateName"] == "finished" or task["error"], task
