from __future__ import annotations

import dataclasses
import errno
import io
import threading
import time
from typing import BinaryIO

import pytest

from darkroom.contract.errors import ServiceConflict
from darkroom.contract.events import EventKind
from darkroom.contract.folders import result_version
from darkroom.core.config import Config
from darkroom.core.ids import new_task_id
from darkroom.core.imagefiles import FileImageStore, Folder
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient, DatabaseLeases
from darkroom.database.direct import DirectLeases, leases_for
from darkroom.database.service import open_store
from darkroom.database.store import State
from darkroom.master.app import create_app as create_master_app
from darkroom.master.client import LeaseLost, MasterClient, TaskWasCancelled
from darkroom.storage.client import StorageClient
from darkroom.worker.loop import SPOOL_BYTES, TaskLoop, _Finisher, _read_body
from harness.launch import wait_until
from support.inprocess import STORAGE_ACCESS, service_client, storage_by


class Rejected(Exception):
    pass


def reverse_bytes(source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object) -> str:
    data = source.read()
    if data.startswith(b"bad"):
        raise Rejected("not an image")
    if data.startswith(b"flaky"):
        raise RuntimeError("disk hiccup")
    destination.write(data[::-1])
    return "application/octet-stream"


# Darkroom's workers call the database, or its task file themselves (a store of their own on
# it, as a loop process has: "direct"); seed-style workers the master's routes, which relay.
LEASE_ROUTES = {
    "database": lambda config, database, master_app: DatabaseLeases(database),
    "direct": lambda config, database, master_app: DirectLeases(
        database, open_store(config), threading.Event()
    ),
    "master": lambda config, database, master_app: MasterClient(
        service_client(master_app, "masterAddress", "master:3")
    ),
}


@pytest.fixture(
    params=[("database", "api"), ("master", "api"), ("database", "volume"), ("direct", "volume")]
)
def system(config, request):
    lease_route, storage_access = request.param
    return build_system(config, FileImageStore(config.data_dir), lease_route, storage_access)


def build_system(
    config, images: FileImageStore, lease_route: str = "database", storage_access: str = "api"
):
    tasks = open_store(config)
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage = storage_by(storage_access, config, images)
    master_app = create_master_app(
        config, DatabaseClient(database), storage, check_pipeline=lambda text: text or "swap"
    )
    leases = LEASE_ROUTES[lease_route](config, database, master_app)
    stop = threading.Event()
    loop = TaskLoop(leases, storage, reverse_bytes, Rejected, 0, 5, 5, stop)
    api = MasterClient(service_client(master_app, "masterAddress", "master:3"))  # clients' routes
    return tasks, storage, leases, loop, api


def submit(tasks, storage, body: bytes) -> str:
    task = tasks.create("swap")
    storage.send(Folder.WORKING, task.id, body)
    tasks.enqueue(task.id)
    return task.id


def result_path(config, tasks, task_id: str):
    """Where the finished task's result is: named after the lease that finished it."""
    return (
        config.data_dir / "finished" / f"{task_id}.{result_version(tasks.get(task_id).lease_token)}"
    )


def claim_and_handle(leases, loop) -> None:
    claim = leases.claim(0, 5)
    assert claim is not None
    loop.handle(claim)


def test_success_stores_result_and_finishes(system, config):
    tasks, storage, leases, loop, _ = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    claim_and_handle(leases, loop)
    assert tasks.get(task_id).state == State.FINISHED
    assert result_path(config, tasks, task_id).read_bytes() == b"cba-GNP\x89"
    assert loop.completed == 1


def test_rejected_image_fails_permanently_with_reason(system):
    tasks, storage, leases, loop, _ = system
    task_id = submit(tasks, storage, b"bad bytes")
    claim_and_handle(leases, loop)
    task = tasks.get(task_id)
    assert task.state == State.FAILED and task.error == "not an image"
    assert task.attempts == 1


def test_unexpected_error_is_retried(system):
    tasks, storage, leases, loop, _ = system
    task_id = submit(tasks, storage, b"flaky")
    claim_and_handle(leases, loop)
    task = tasks.get(task_id)
    assert task.state == State.QUEUED
    assert "disk hiccup" in task.error


def test_missing_working_image_fails_the_task_with_reason(system):
    tasks, _, leases, loop, _ = system
    task = tasks.create("swap")
    tasks.enqueue(task.id)
    claim_and_handle(leases, loop)
    failed = tasks.get(task.id)
    assert failed.state == State.FAILED
    assert "image is gone" in failed.error


def test_storage_outage_is_retried(system, config):
    tasks, storage, leases, loop, _ = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    (config.data_dir / "finished").rmdir()  # the result cannot be written
    claim_and_handle(leases, loop)
    task = tasks.get(task_id)
    assert task.state == State.QUEUED and task.error


def test_a_lost_lease_is_a_conflict_the_loop_leaves_alone(system):
    tasks, storage, leases, loop, _ = system
    route = "master" if isinstance(leases, MasterClient) else "database"
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    claim = leases.claim(0, 5)
    stolen = dataclasses.replace(claim, lease="someone-else")
    with pytest.raises(LeaseLost) as caught:
        leases.heartbeat(stolen)
    assert isinstance(caught.value, ServiceConflict) and caught.value.service == route
    loop.handle(stolen)
    task = tasks.get(task_id)
    assert task.state == State.IN_PROGRESS and task.error is None  # not failed by the loser
    assert (loop.completed, loop.failed) == (0, 0)


def test_run_stops_when_asked(system):
    _, _, _, loop, _ = system
    loop._stop.set()
    loop.run()  # returns at once instead of claiming


class StoreAfterNextTaskStarts:
    """Storage whose result upload of the first task waits until the next task is processed.

    A loop that stored results before claiming the next task would wait here until the timeout.
    """

    def __init__(self, storage: StorageClient, processing_started: threading.Event) -> None:
        self._storage = storage
        self._processing_started = processing_started
        self.overlapped: bool | None = None  # for the first result stored

    def open(self, *args, **kwargs):
        return self._storage.open(*args, **kwargs)

    def send(self, folder, task_id, body, size=None, version=None) -> None:
        if folder == Folder.FINISHED and self.overlapped is None:
            self.overlapped = self._processing_started.wait(5)
        self._storage.send(folder, task_id, body, size, version)


def reversing_until_the_second(
    second_started: threading.Event, stop: threading.Event, processing_seconds: float = 0.0
):
    """A processor writing each body reversed; at the body ``two`` it says it started, stops
    the loop (which claims nothing after this task) and takes ``processing_seconds``."""

    def process(source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object) -> str:
        data = source.read()
        if data == b"two":
            second_started.set()
            stop.set()
            time.sleep(processing_seconds)
        destination.write(data[::-1])
        return "application/octet-stream"

    return process


def test_run_stores_each_result_while_processing_the_next_task(system, config):
    tasks, storage, leases, _, _ = system
    first = submit(tasks, storage, b"one")
    second = submit(tasks, storage, b"two")
    second_started = threading.Event()
    stop = threading.Event()
    process = reversing_until_the_second(second_started, stop)

    slow_storage = StoreAfterNextTaskStarts(storage, second_started)
    TaskLoop(leases, slow_storage, process, Rejected, 0, 5, 5, stop).run()
    assert slow_storage.overlapped, "the first result was stored only after the next task"
    # run() returned only once the last result was stored: nothing is left half done.
    assert tasks.get(first).state == State.FINISHED
    assert tasks.get(second).state == State.FINISHED
    assert result_path(config, tasks, second).read_bytes() == b"owt"


def test_a_task_given_back_by_a_stopping_worker_keeps_its_attempt(system, config):
    """Ctrl-C used to leave tasks to their lease: an attempt spent, "worker stopped responding"."""
    tasks, storage, leases, _, _ = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    processing, resume = threading.Event(), threading.Event()

    def slow(source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object) -> str:
        processing.set()
        resume.wait(10)
        return reverse_bytes(source, destination, pipeline)

    loop = TaskLoop(leases, storage, slow, Rejected, 0, 5, 5, threading.Event())
    handling = threading.Thread(target=claim_and_handle, args=(leases, loop))
    handling.start()
    assert processing.wait(10)
    assert loop.give_back_held() == 1
    resume.set()
    handling.join(10)
    task = tasks.get(task_id)
    assert task.state == State.QUEUED and task.attempts == 0 and not task.error
    assert not list((config.data_dir / "finished").glob(f"{task_id}*"))  # not stored after all
    assert loop.give_back_held() == 0


def test_a_worker_that_lost_its_lease_never_replaces_the_result(system):
    """A stale worker (frozen after its claim, resumed after another worker finished) used to
    store over the finished result: /get then served its bytes instead."""
    tasks, storage, leases, loop, api = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    stale_claim = leases.claim(0, 5)
    tasks.release(task_id, stale_claim.lease)  # its lease is gone; it does not know
    claim_and_handle(leases, loop)  # another worker finishes the task
    assert tasks.get(task_id).state == State.FINISHED

    def other_bytes(source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object) -> str:
        destination.write(b"the stale worker's result")
        return "application/octet-stream"

    TaskLoop(leases, storage, other_bytes, Rejected, 0, 5, 5, threading.Event()).handle(stale_claim)
    served = api.service.request("GET", "/get", params={"id": task_id})
    assert served.status_code == 200 and served.content == b"cba-GNP\x89"
    assert tasks.get(task_id).state == State.FINISHED


class FullForAWhile(FileImageStore):
    """A storage volume with no space for results, for the first ``full_writes`` of them."""

    def __init__(self, root, full_writes: int) -> None:
        super().__init__(root)
        self.full_writes = full_writes

    def write(self, folder, task_id, chunks, limit, version=None) -> int:
        if folder == Folder.FINISHED and self.full_writes > 0:
            self.full_writes -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(folder, task_id, chunks, limit, version)


@pytest.mark.parametrize("storage_access", STORAGE_ACCESS)
def test_a_full_disk_on_the_result_is_waited_out_keeping_the_attempt(config, storage_access):
    """A 507 on the result write used to spend the task's attempts within a second."""
    images = FullForAWhile(config.data_dir, 4)
    tasks, storage, leases, _, _ = build_system(config, images, storage_access=storage_access)
    loop = TaskLoop(leases, storage, reverse_bytes, Rejected, 0, 5, 5, threading.Event())
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    started = time.monotonic()
    claim_and_handle(leases, loop)
    task = tasks.get(task_id)
    assert task.state == State.FINISHED and task.attempts == 1
    assert time.monotonic() - started >= 0.5 + 1 + 2, "backed off between the writes"
    assert result_path(config, tasks, task_id).read_bytes() == b"cba-GNP\x89"


@pytest.mark.parametrize("storage_access", STORAGE_ACCESS)
def test_a_disk_that_stays_full_fails_the_task_after_the_deadline_saying_why(
    config, storage_access
):
    images = FullForAWhile(config.data_dir, 10**6)
    tasks, storage, leases, _, _ = build_system(config, images, storage_access=storage_access)
    loop = TaskLoop(
        leases, storage, reverse_bytes, Rejected, 0, 5, 5, threading.Event(), disk_full_deadline=1
    )
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    started = time.monotonic()
    claim_and_handle(leases, loop)
    task = tasks.get(task_id)
    assert time.monotonic() - started >= 1
    assert task.state == State.FAILED and task.attempts == 1
    assert "stayed full for 1 s" in task.error and "no space left" in task.error


class HeartbeatWatch(DatabaseLeases):
    """A worker's database calls, noting a heartbeat refused because the task was cancelled."""

    def __init__(self, service) -> None:
        super().__init__(service)
        self.told_cancelled = threading.Event()

    def heartbeat(self, claim, **kwargs) -> None:
        try:
            super().heartbeat(claim, **kwargs)
        except TaskWasCancelled:
            self.told_cancelled.set()
            raise


class CountedResults(FileImageStore):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.results_written = 0

    def write(self, folder, task_id, chunks, limit, version=None) -> int:
        self.results_written += folder == Folder.FINISHED
        return super().write(folder, task_id, chunks, limit, version)


def test_a_task_cancelled_while_processing_stops_at_the_next_heartbeat(config):
    images = CountedResults(config.data_dir)
    tasks, storage, leases, _, _ = build_system(config, images)
    watched = HeartbeatWatch(leases.service)
    task_id = submit(tasks, storage, b"\x89PNG-abc")

    def cancelled_meanwhile(
        source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object
    ) -> str:
        tasks.cancel(task_id)  # the client cancels while the image is processed
        assert watched.told_cancelled.wait(10), "a heartbeat came and was refused"
        destination.write(b"a result nobody wants")
        return "application/octet-stream"

    # A lease of 0.15 s: a heartbeat every 0.05 s
    loop = TaskLoop(watched, storage, cancelled_meanwhile, Rejected, 0, 0.15, 5, threading.Event())
    claim = watched.claim(0, 5)
    loop.handle(claim)
    assert tasks.get(task_id).state == State.CANCELLED
    assert images.results_written == 0, "the result is never sent"
    assert (loop.completed, loop.failed) == (0, 0)
    with pytest.raises(TaskWasCancelled) as caught:
        watched.heartbeat(claim)
    assert isinstance(caught.value, LeaseLost) and caught.value.title == "Task cancelled"


def test_a_cancelled_task_runs_no_step_after_the_one_in_progress(config):
    tasks, storage, leases, _, _ = build_system(config, CountedResults(config.data_dir))
    watched = HeartbeatWatch(leases.service)
    task_id = submit(tasks, storage, b"\x89PNG-abc")
    steps_run = []

    def three_steps(source, destination, pipeline, *, stage_done) -> str:
        for step in ("blur:50", "rotate:33", "sharpen"):
            started = time.perf_counter()
            steps_run.append(step)
            if step == "blur:50":
                tasks.cancel(task_id)  # the client cancels during the first step
                assert watched.told_cancelled.wait(10), "a heartbeat came and was refused"
            stage_done(step, started, time.perf_counter())
        destination.write(b"a result nobody wants")
        return "application/octet-stream"

    loop = TaskLoop(watched, storage, three_steps, Rejected, 0, 0.15, 5, threading.Event())
    loop.handle(watched.claim(0, 5))
    assert steps_run == ["blur:50"], "the steps after the cancel are not run"
    assert tasks.get(task_id).state == State.CANCELLED
    assert (loop.completed, loop.failed) == (0, 0)


def test_a_task_cancelled_after_its_last_heartbeat_has_its_sent_result_removed(system, config):
    tasks, storage, leases, _, api = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")

    def cancelled_at_the_end(
        source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object
    ) -> str:
        destination.write(b"a result nobody wants")
        tasks.cancel(task_id)  # after the last heartbeat: the finish is what is refused
        return "application/octet-stream"

    loop = TaskLoop(leases, storage, cancelled_at_the_end, Rejected, 0, 60, 5, threading.Event())
    claim_and_handle(leases, loop)
    assert tasks.get(task_id).state == State.CANCELLED
    assert list((config.data_dir / "finished").iterdir()) == [], "the sent result is removed"
    assert (loop.completed, loop.failed) == (0, 0)
    served = api.service.request("GET", "/get", params={"id": task_id})
    assert served.status_code == 410


# -- stages for the job's live progress (issue 16) ---------------------------------------------


def test_stages_go_with_the_heartbeat_then_the_rest_with_the_finish(system):
    tasks, storage, leases, _, _ = system
    task_id = submit(tasks, storage, b"\x89PNG-abc")

    def stage_names() -> list[str]:
        return [e.data["stage"] for e in tasks.events(task_id) if e.kind == EventKind.STAGE]

    def decode_then_wait_for_a_heartbeat(source, destination, pipeline, *, stage_done) -> str:
        started = time.perf_counter()
        stage_done("decode", started, time.perf_counter())
        deadline = time.monotonic() + 10
        while stage_names() != ["download", "decode"] and time.monotonic() < deadline:
            time.sleep(0.02)  # a heartbeat (every 0.05 s here) carries them
        seen_before_the_finish.extend(stage_names())
        return reverse_bytes(source, destination, pipeline)

    seen_before_the_finish: list[str] = []

    # a lease of 0.15 s: a heartbeat every 0.05 s
    loop = TaskLoop(
        leases, storage, decode_then_wait_for_a_heartbeat, Rejected, 0, 0.15, 5, threading.Event()
    )
    claim_and_handle(leases, loop)
    assert seen_before_the_finish == ["download", "decode"]
    events = tasks.events(task_id)
    assert tasks.get(task_id).state == State.FINISHED
    assert stage_names() == ["download", "decode", "store"]
    assert [e.data.get("state") for e in events[-2:]] == [None, "finished"]  # store, finished
    store = events[-2].data
    assert store["startMs"] >= 0 and store["durationMs"] >= 0


def test_a_failed_attempt_sends_its_stages_with_the_failure(system):
    tasks, storage, leases, loop, _ = system
    task_id = submit(tasks, storage, b"bad image")
    claim_and_handle(leases, loop)
    events = tasks.events(task_id)
    assert tasks.get(task_id).state == State.FAILED
    assert [(e.kind, e.data.get("stage") or e.data.get("state")) for e in events[-2:]] == [
        (EventKind.STAGE, "download"),
        (EventKind.STATE, "failed"),
    ]


# -- the loop's own threads (issue 12: a thread started and joined per task cost CPU) ----------


def test_a_loop_runs_on_the_same_two_threads_whatever_the_number_of_tasks(system):
    tasks, storage, leases, _, _ = system
    for n in range(4):
        submit(tasks, storage, b"task %d" % n)
    before = set(threading.enumerate())
    seen: set[threading.Thread] = set()
    stop = threading.Event()
    handled = []

    def process(source: BinaryIO, destination: BinaryIO, pipeline: str, **_: object) -> str:
        seen.update(set(threading.enumerate()) - before - {threading.current_thread()})
        handled.append(pipeline)
        if len(handled) == 4:
            stop.set()
        return reverse_bytes(source, destination, pipeline)

    TaskLoop(leases, storage, process, Rejected, 0, 5, 5, stop).run()
    assert len(handled) == 4
    # One storing results, one sending heartbeats: not a heartbeat thread per task.
    assert len(seen) == 2, sorted(thread.name for thread in seen)
    assert not set(threading.enumerate()) - before, "the loop's threads end with its run"


def both_finish_on_their_first_attempt(
    tmp_path, slow_store: type[StoreAfterNextTaskStarts], processing_seconds: float
) -> None:
    """Two tasks with a 0.3 s lease through one loop, the second processed for
    ``processing_seconds`` while ``slow_store`` stores the first: past their lease, only
    heartbeats keep them, so both finish on their first attempt."""
    config = Config(data_dir=tmp_path, lease_seconds=0.3, max_upload_bytes=1024 * 1024)
    tasks, storage, leases, _, _ = build_system(config, FileImageStore(config.data_dir))
    first = submit(tasks, storage, b"one")
    second = submit(tasks, storage, b"two")
    second_started = threading.Event()
    stop = threading.Event()
    process = reversing_until_the_second(second_started, stop, processing_seconds)

    slow_storage = slow_store(storage, second_started)
    TaskLoop(leases, slow_storage, process, Rejected, 0, 0.3, 5, stop).run()
    assert slow_storage.overlapped
    for task_id in (first, second):
        task = tasks.get(task_id)
        assert task.state == State.FINISHED and task.attempts == 1, task


def test_one_heartbeat_thread_keeps_the_leases_of_a_task_stored_and_the_next_processed(tmp_path):
    """Both tasks are held past their lease (0.3 s): only heartbeats keep them."""
    both_finish_on_their_first_attempt(
        tmp_path,
        StoreAfterNextTaskStarts,
        processing_seconds=1.0,  # 3 leases
    )


class SlowFirstStore(StoreAfterNextTaskStarts):
    """The first result is stored only once the next task has been processed past its lease."""

    def send(self, folder, task_id, body, size=None, version=None) -> None:
        if folder == Folder.FINISHED and self.overlapped is None:
            self.overlapped = self._processing_started.wait(5)
            time.sleep(1.0)  # storing outlasts the lease three times
        self._storage.send(folder, task_id, body, size, version)


def test_the_lease_of_a_result_being_stored_is_kept_while_the_next_task_is_processed(tmp_path):
    both_finish_on_their_first_attempt(tmp_path, SlowFirstStore, processing_seconds=0.0)


class Body:
    """A download's answer: its Content-Length (when given) and its bytes in chunks."""

    def __init__(self, data: bytes, with_length: bool = True) -> None:
        self.data = data
        self.headers = {"Content-Length": str(len(data))} if with_length else {}

    def stream(self, chunk_bytes: int):
        for start in range(0, len(self.data), chunk_bytes):
            yield self.data[start : start + chunk_bytes]

    @property
    def content(self) -> bytes:
        return self.data


def test_a_download_that_fits_is_read_once_into_memory_a_larger_one_spills_to_disk():
    small = _read_body(Body(b"x" * 1000))
    assert isinstance(small, io.BytesIO) and small.read() == b"x" * 1000
    large = _read_body(Body(b"y" * (SPOOL_BYTES + 1)))
    assert not isinstance(large, io.BytesIO)
    assert large._rolled and large.read() == b"y" * (SPOOL_BYTES + 1)  # on disk, not in memory
    unknown = _read_body(Body(b"z" * 1000, with_length=False))
    assert unknown.read() == b"z" * 1000


def test_an_image_on_the_workers_volume_is_read_in_place(config):
    storage = storage_by("volume", config.replace(max_upload_bytes=2 * SPOOL_BYTES))
    task_id = new_task_id()
    storage.send(Folder.WORKING, task_id, b"\x89PNG" + b"w" * (SPOOL_BYTES + 1))
    with storage.open(Folder.WORKING, task_id) as answer:
        source = _read_body(answer)
    with source:  # the stored file itself, still open: no copy in memory or in a spool
        assert source.name == str(config.data_dir / "working" / task_id)
        assert source.read(5) == b"\x89PNGw"


def test_an_error_of_the_step_in_the_background_is_raised_by_the_loop():
    with pytest.raises(RuntimeError, match="bug"), _Finisher() as finisher:
        finisher.run(lambda: 1 / 1)
        finisher.run(lambda: (_ for _ in ()).throw(RuntimeError("bug")))


def test_a_loop_on_postgresql_itself_hands_its_finish_to_the_database_roles_feed(
    config, postgres_url
):
    """``DARKROOM_DATABASE_DIRECT`` with ``DARKROOM_DATABASE_URL``: the loop's own store on
    PostgreSQL claims and finishes; the database role's store (another replica) has the end in
    its feed, as a master following it needs."""
    on_postgresql = dataclasses.replace(config, database_url=postgres_url, database_direct=True)
    database_store = open_store(on_postgresql)
    leases = leases_for(on_postgresql, None, threading.Event())
    storage = storage_by("volume", config)
    loop = TaskLoop(leases, storage, reverse_bytes, Rejected, 0, 5, 5, threading.Event())
    try:
        start = database_store.ended(None, 0)
        task_id = submit(database_store, storage, b"\x89PNG-abc")
        claim_and_handle(leases, loop)
        assert database_store.get(task_id).state == State.FINISHED
        ended = wait_until(
            lambda: database_store.ended(start.epoch, start.position).ended, 10, "the end"
        )
        assert [each.task_id for each in ended] == [task_id]
    finally:
        loop.close()
        database_store.close()
