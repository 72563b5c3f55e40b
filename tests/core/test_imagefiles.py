"""Several FileImageStores on one root, as storage replicas on a ReadWriteMany volume share it."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from darkroom.core.ids import new_task_id
from darkroom.core.imagefiles import (
    ABANDONED_AFTER_SECONDS,
    TEMP_PREFIX,
    FileImageStore,
    Folder,
    ImageNotFound,
)

ROUNDS = 40
LIMIT = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _payload(marker: int) -> bytes:
    # large enough to take several chunks, and each byte tells whose it is
    return bytes([marker]) * 200_000


def _chunks(data: bytes, size: int = 16_384) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _read(store: FileImageStore, task_id: str) -> bytes:
    image = store.open(Folder.WORKING, task_id)
    with image.stream:
        return image.stream.read()


def _run_together(*actions: Callable[[], object]) -> list[object]:
    """Run the actions in threads released at the same moment; their results, or raise."""
    start = threading.Barrier(len(actions), timeout=10)

    def released(action: Callable[[], object]) -> object:
        start.wait()
        return action()

    with ThreadPoolExecutor(len(actions)) as pool:
        futures = [pool.submit(released, action) for action in actions]
        return [future.result(timeout=60) for future in futures]


def _temporary_files(root: Path) -> list[Path]:
    return [p for folder in Folder for p in (root / folder).glob(f"{TEMP_PREFIX}*")]


def test_a_replica_starting_or_sweeping_keeps_another_replicas_upload(root: Path) -> None:
    writer = FileImageStore(root)
    task_id = new_task_id()
    data = _payload(7)

    def upload_while_another_replica_starts() -> Iterator[bytes]:
        chunks = _chunks(data)
        yield next(chunks)
        assert len(_temporary_files(root)) == 1  # the upload's, half written
        other = FileImageStore(root)  # its start removes crashed uploads' leftovers
        other.remove_partial_uploads()
        FileImageStore(root, clock=lambda: 1e12).purge(older_than=0)  # a sweep much later
        yield from chunks

    assert writer.write(Folder.WORKING, task_id, upload_while_another_replica_starts(), LIMIT)
    assert _read(FileImageStore(root), task_id) == data
    assert _temporary_files(root) == []


def test_leftovers_of_a_dead_replica_go_those_of_a_live_one_stay(root: Path, hold_locked) -> None:
    FileImageStore(root)
    live = root / "working" / f"{TEMP_PREFIX}live"
    end_writer = hold_locked(live)
    dead = root / "finished" / f"{TEMP_PREFIX}dead"
    dead.write_bytes(b"partial")  # nobody holds it: its writer is gone
    FileImageStore(root)
    assert live.exists()
    assert not dead.exists()
    end_writer()
    FileImageStore(root)
    assert not live.exists()


def test_a_cleanup_leaves_what_it_cannot_judge(root: Path) -> None:
    FileImageStore(root)
    folder = root / "working" / f"{TEMP_PREFIX}folder"  # not an upload's file
    folder.mkdir()
    FileImageStore(root)  # starts all the same
    assert folder.is_dir()


def test_the_sweep_removes_temporary_files_only_long_abandoned(root: Path) -> None:
    now = 1_000_000.0
    store = FileImageStore(root, clock=lambda: now)
    stale, fresh = root / "working" / f"{TEMP_PREFIX}stale", root / "working" / f"{TEMP_PREFIX}new"
    for path, age in ((stale, ABANDONED_AFTER_SECONDS + 1), (fresh, 60)):
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
    store.purge(older_than=0)
    assert not stale.exists()
    assert fresh.exists()


def test_two_replicas_write_and_read_the_same_id_at_once(root: Path) -> None:
    replicas = [FileImageStore(root), FileImageStore(root)]
    task_id = new_task_id()
    versions = {_payload(marker) for marker in (1, 2)}
    replicas[0].write(Folder.WORKING, task_id, iter([_payload(1)]), LIMIT)

    def write(store: FileImageStore, marker: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(ROUNDS):
                store.write(Folder.WORKING, task_id, _chunks(_payload(marker)), LIMIT)

        return run

    def read(store: FileImageStore) -> Callable[[], set[bytes]]:
        def run() -> set[bytes]:
            seen = set()
            for _ in range(ROUNDS * 2):
                data = _read(store, task_id)
                assert data in versions, f"a partial or mixed file of {len(data)} bytes"
                seen.add(data)
            return seen

        return run

    first, second = replicas
    _run_together(write(first, 1), write(second, 2), read(first), read(second))
    assert _read(first, task_id) in versions
    assert _temporary_files(root) == []


def test_two_replicas_write_different_ids_and_read_each_others(root: Path) -> None:
    replicas = [FileImageStore(root), FileImageStore(root)]
    ids = [[new_task_id() for _ in range(ROUNDS)] for _ in replicas]

    def write_then_read_the_other(index: int) -> None:
        mine, theirs = replicas[index], replicas[1 - index]
        for task_id in ids[index]:
            mine.write(Folder.WORKING, task_id, _chunks(_payload(index)), LIMIT)
            assert _read(theirs, task_id) == _payload(index)  # no cache: the disk answers

    _run_together(lambda: write_then_read_the_other(0), lambda: write_then_read_the_other(1))
    for index, task_ids in enumerate(ids):
        for task_id in task_ids:
            assert replicas[1 - index].delete(Folder.WORKING, task_id)
            with pytest.raises(ImageNotFound):
                replicas[index].open(Folder.WORKING, task_id)


def test_sweeps_of_two_replicas_at_once_remove_each_file_once(root: Path) -> None:
    replicas = [FileImageStore(root), FileImageStore(root)]
    old = [new_task_id() for _ in range(200)]
    for task_id in old:
        replicas[0].write(Folder.FINISHED, task_id, iter([b"old"]), LIMIT)
        os.utime(root / "finished" / task_id, (1_000, 1_000))
    kept = new_task_id()
    replicas[1].write(Folder.FINISHED, kept, iter([b"new"]), LIMIT)
    removed = _run_together(*(lambda s=store: s.purge(older_than=2_000) for store in replicas))
    assert sum(removed) == len(old)  # a file gone between listing and delete is not an error
    assert sorted(p.name for p in (root / "finished").iterdir()) == [kept]


def test_a_lock_taken_by_a_cleanup_first_makes_the_writer_take_another_file(root: Path) -> None:
    """A cleanup that took the new temporary file before the writer locked it removed it."""
    store = FileImageStore(root)
    real_flock = fcntl.flock
    calls = []

    def cleanup_wins_the_first_race(fd: int, operation: int) -> None:
        if not calls:
            calls.append(fd)
            assert store.remove_partial_uploads() == 1  # the writer's file, not yet locked
        real_flock(fd, operation)

    task_id = new_task_id()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fcntl, "flock", cleanup_wins_the_first_race)
        store.write(Folder.WORKING, task_id, iter([b"whole"]), LIMIT)
    assert _read(store, task_id) == b"whole"
    assert _temporary_files(root) == []
