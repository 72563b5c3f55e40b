"""A task loop process that dies mid-task (a decoder's crash, the OOM killer) gives its task
back at once, an attempt spent, not after its lease (darkroom.worker.heldtasks): real processes
on 127.0.0.1, the loop killed with SIGSEGV while it processes a slow job."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from PIL import Image

from support import jobs
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 120  # far longer than the test: only the parent's report can give it back


@pytest.fixture
def stack(tmp_path) -> Iterator[Services]:
    running = Services(
        tmp_path / "data", tmp_path, lease_seconds=str(LEASE_SECONDS), concurrency="1"
    )
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def _task_loop(stack: Services) -> psutil.Process:
    worker = psutil.Process(stack.processes["worker"].process.pid)
    (loop,) = [child for child in worker.children() if "spawn_main" in " ".join(child.cmdline())]
    return loop


def _slow_image() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((2000, 1500), 60).convert("RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_a_loop_killed_mid_task_gives_it_back_at_once(stack: Services) -> None:
    task_id = jobs.upload(stack, _slow_image(), op="blur:40,blur:40,blur:40")
    jobs.wait_state(stack, task_id, "in progress")
    killed_at = time.monotonic()
    os.kill(_task_loop(stack).pid, signal.SIGSEGV)

    def given_back() -> dict | None:
        task = jobs.status(stack, task_id)
        return task if task["attempts"] >= 1 and task["stateName"] != "in progress" else None

    task = wait_until(given_back, 20, "the task back in the queue")
    assert time.monotonic() - killed_at < LEASE_SECONDS / 4
    assert task["error"] == "the worker's process was killed by SIGSEGV while it held the task"
    finished = jobs.wait_state(stack, task_id, "finished", "failed", timeout=120)
    assert finished["stateName"] == "finished"  # the loop started again and did it
