"""A loop process's held tasks: recorded at each change, failed at once when the process dies
(darkroom.worker.heldtasks), against a real database app and task store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import BinaryIO

from darkroom.core.imagefiles import FileImageStore
from darkroom.database.store import State
from darkroom.worker.heldtasks import HeldTasks, _how_it_ended, fail_lost
from darkroom.worker.loop import TaskLoop
from worker.test_loop import Rejected, build_system, reverse_bytes, submit


def test_the_record_round_trips_and_is_taken_once(tmp_path, config) -> None:
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    submit(tasks, storage, b"\x89PNG-abc")
    claim = leases.claim(0, 5)
    held = HeldTasks(tmp_path / "loop-0.json")
    held.write([claim])
    assert held.take() == [claim]
    assert held.take() == []  # taken: a second death of the slot reports nothing twice


def test_an_unreadable_record_is_no_task(tmp_path, config) -> None:
    held = HeldTasks(tmp_path / "loop-0.json")
    held.path.write_text("9\n{not json")
    assert held.take() == []
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    submit(tasks, storage, b"\x89PNG-abc")
    held.write([leases.claim(0, 5)])
    whole = held.path.read_bytes()
    held.path.write_bytes(whole[:-5])  # a write cut short by the process's death
    assert held.take() == []


def test_a_shorter_record_replaces_a_longer_one_whole(tmp_path, config) -> None:
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    submit(tasks, storage, b"\x89PNG-abc")
    held = HeldTasks(tmp_path / "loop-0.json")
    held.write([leases.claim(0, 5)])
    held.write([])
    assert held.path.read_bytes() == b"2\n[]"


def test_a_loop_records_what_it_holds_while_it_holds_it(config, tmp_path) -> None:
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    submit(tasks, storage, b"\x89PNG-abc")
    held = HeldTasks(tmp_path / "loop-0.json")
    seen: list[list[str]] = []

    def process(source: BinaryIO, destination: BinaryIO, pipeline: str, **kw: object) -> str:
        seen.append([claim.task_id for claim in HeldTasks(held.path).take()])
        return reverse_bytes(source, destination, pipeline, **kw)

    loop = TaskLoop(
        leases, storage, process, Rejected, 0, 5, 5, threading.Event(), held_changed=held.write
    )
    claim = leases.claim(0, 5)
    loop.handle(claim)
    assert seen == [[claim.task_id]]  # held while it was processed
    assert held.take() == []  # and let go once finished


def test_a_lost_task_is_failed_at_once_as_one_attempt_saying_how(config, tmp_path) -> None:
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    claim = leases.claim(0, 5)
    held = HeldTasks(tmp_path / "loop-0.json")
    held.write([claim])
    assert fail_lost(held, -signal.SIGSEGV, leases) == 1
    task = tasks.get(task_id)
    assert task.state == State.QUEUED and task.attempts == 1  # back in the queue, not waiting
    assert task.error == "the worker's process was killed by SIGSEGV while it held the task"
    for _ in range(2):  # the other attempts die too: the task fails, saying why
        again = leases.claim(0, 5)
        held.write([again])
        fail_lost(held, -signal.SIGSEGV, leases)
    task = tasks.get(task_id)
    assert task.state == State.FAILED and "killed by SIGSEGV" in task.error


def test_a_task_finished_before_the_death_is_left_finished(config, tmp_path) -> None:
    tasks, storage, leases, loop, _ = build_system(config, FileImageStore(config.data_dir))
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    claim = leases.claim(0, 5)
    loop.handle(claim)  # finished; the record still names it (written before the finish)
    held = HeldTasks(tmp_path / "loop-0.json")
    held.write([claim])
    assert fail_lost(held, 1, leases) == 0  # the lease is spent: the database refuses
    assert tasks.get(task_id).state == State.FINISHED


def test_how_a_process_ended_is_said_from_its_exit_code() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(child.pid, signal.SIGKILL)
    assert _how_it_ended(child.wait()) == "was killed by SIGKILL"
    assert _how_it_ended(3) == "exited with status 3"
    assert _how_it_ended(-200) == "was killed by signal 200"
