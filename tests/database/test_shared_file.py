"""Several stores on one SQLite file, as the database role, the master and each worker loop
process open it with DARKROOM_DATABASE_DIRECT: each store here stands for a process."""

from __future__ import annotations

import gc
import socket
import threading

import pytest

from darkroom.contract.tasks import UNFINISHED_STATES
from darkroom.database import store as store_module
from darkroom.database.store import LeasePolicy, SqliteTaskStore, State
from darkroom.database.wakeups import Wakeup, Wakeups
from harness.launch import wait_until


@pytest.fixture
def open_stores(tmp_path):
    opened: list[SqliteTaskStore] = []

    def open_one() -> SqliteTaskStore:
        opened.append(SqliteTaskStore(tmp_path / "tasks.sqlite3", LeasePolicy(lease_seconds=30)))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def queued(store: SqliteTaskStore) -> str:
    task = store.create("swap")
    store.enqueue(task.id)
    return task.id


def test_a_claim_waiting_in_one_process_gets_the_task_another_queues(open_stores):
    master, worker = open_stores(), open_stores()
    claimed: list = []
    claimer = threading.Thread(target=lambda: claimed.append(worker.claim(wait_seconds=20)))
    claimer.start()
    task_id = queued(master)
    claimer.join(20)
    assert claimed and claimed[0] is not None and claimed[0].id == task_id
    assert master.get(task_id).state == State.IN_PROGRESS


def test_a_watch_in_one_process_answers_when_another_finishes_the_task(open_stores):
    master, worker = open_stores(), open_stores()
    task_id = queued(master)
    claim = worker.claim()
    seen: list = []
    watcher = threading.Thread(
        target=lambda: seen.append(master.watch(task_id, UNFINISHED_STATES, 20))
    )
    watcher.start()
    worker.finish(task_id, claim.lease_token)
    watcher.join(20)
    assert seen and seen[0].state == State.FINISHED


def test_every_process_feed_has_the_ends_of_every_process_in_order(open_stores):
    master, worker, database = open_stores(), open_stores(), open_stores()
    first, second = queued(master), queued(master)
    for task_id in (first, second):
        claim = worker.claim()
        assert claim.id == task_id
        worker.finish(task_id, claim.lease_token)
    master.cancel(cancelled := master.create("swap").id)
    for store in (master, worker, database):
        start = store.ended(None, 0)  # a follower starts where the feed is
        epoch = start.epoch
        wait_until(lambda s=store, e=epoch: len(s.ended(e, 0).ended) == 3, 10, "the ends")
        ended = store.ended(epoch, 0).ended
        assert [(e.task_id, e.state) for e in ended] == [
            (first, State.FINISHED),
            (second, State.FINISHED),
            (cancelled, State.CANCELLED),
        ]
        assert ended[0].result is not None and ended[2].result is None


def test_a_store_opened_later_starts_its_feed_at_the_newest_end(open_stores):
    first = open_stores()
    earlier = queued(first)
    first.cancel(earlier)
    later = open_stores()
    assert later.ended(later.ended(None, 0).epoch, 0).ended == ()


def test_ends_pruned_before_a_process_read_them_start_a_new_epoch_of_its_feed(
    open_stores, monkeypatch
):
    monkeypatch.setattr(store_module, "ENDED_LOG_ROWS", 2)
    database, behind = open_stores(), open_stores()
    behind._wakeups.close()  # it hears of no commit: as a process whose datagrams were lost
    epoch = behind.ended(None, 0).epoch
    for _ in range(4):
        database.cancel(database.create("swap").id)
    database.expire()  # the database role's sweep prunes the log
    behind._follow_ends()
    now = behind.ended(epoch, 0)
    assert now.reset and now.epoch != epoch  # its follower starts over, misses nothing silently
    assert len(behind.ended(now.epoch, 0).ended) == 2  # the two ends still kept


def test_a_wakeup_names_the_tasks_changed_and_what_the_change_was(tmp_path):
    received: list[Wakeup] = []
    listener = Wakeups(tmp_path / "wakeups", lambda w: received.append(w) if w else None)
    sender = Wakeups(tmp_path / "wakeups", lambda w: None)
    try:
        sender.publish(["a" * 32, "b" * 32], claimable=True)
        wait_until(lambda: received, 10, "a wake-up")
        sender.publish(None, ended=True)
        wait_until(lambda: len(received) == 2, 10, "another")
        assert received[0] == Wakeup(frozenset({"a" * 32, "b" * 32}), True, False)
        assert received[1] == Wakeup(None, False, True)
    finally:
        sender.close()
        listener.close()


def test_the_socket_of_a_process_that_died_is_removed_by_the_next_sender(tmp_path):
    folder = tmp_path / "wakeups"
    sender = Wakeups(folder, lambda w: None)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / "1-deadbeef"))
    dead.close()  # its file stays, as a killed process leaves it
    try:
        sender.publish(["a" * 32])
        assert sorted(p.name for p in folder.iterdir()) == [sender._name]
    finally:
        sender.close()
    assert list(folder.iterdir()) == []  # a closed store takes its own socket away


def test_a_folder_deeper_than_a_socket_address_may_be_works(tmp_path):
    folder = tmp_path / ("d" * 60) / ("e" * 60)
    received: list[Wakeup] = []
    listener = Wakeups(folder, lambda w: received.append(w) if w else None)
    sender = Wakeups(folder, lambda w: None)
    try:
        sender.publish(["c" * 32])
        wait_until(lambda: received, 10, "a wake-up")
        assert received[0].tasks == frozenset({"c" * 32})
    finally:
        sender.close()
        listener.close()


def test_a_store_dropped_without_closing_takes_its_wakeups_thread_and_socket_away(tmp_path):
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3", LeasePolicy())
    thread = store._wakeups._thread
    folder = tmp_path / "tasks.sqlite3.wakeups"
    assert thread.is_alive() and len(list(folder.iterdir())) == 1
    del store
    gc.collect()
    wait_until(lambda: not thread.is_alive(), 10, "the thread's end")
    assert list(folder.iterdir()) == []


def test_datagrams_queued_behind_one_are_taken_with_it_in_one_call(tmp_path):
    received: list[Wakeup] = []
    release = threading.Event()

    def slow(wakeup: Wakeup | None) -> None:
        if wakeup is not None:
            received.append(wakeup)
            release.wait(10)  # the first holds the thread while the rest queue up

    listener = Wakeups(tmp_path / "wakeups", slow)
    sender = Wakeups(tmp_path / "wakeups", lambda w: None)
    try:
        sender.publish(["first"])
        wait_until(lambda: received, 10, "the first wake-up")
        for name in ("a", "b", "c"):
            sender.publish([name], claimable=name == "b")
        sender.publish(None, ended=True)
        release.set()
        wait_until(lambda: len(received) == 2, 10, "the rest, merged")
        assert received[1] == Wakeup(None, claimable=True, ended=True)  # "*" covers a, b, c
        assert sender.unsent == 0
    finally:
        sender.close()
        listener.close()


def test_a_store_closing_while_others_send_still_takes_its_socket_away(tmp_path):
    """The receiver ends as soon as a datagram comes after the close began: the socket's
    removal must not depend on the folder's descriptor it used to close then."""
    folder = tmp_path / "wakeups"
    busy = Wakeups(folder, lambda w: None)
    sending = threading.Event()
    sending.set()

    def send_all_along() -> None:
        while sending.is_set():
            busy.publish(["t" * 22])

    sender = threading.Thread(target=send_all_along)
    sender.start()
    try:
        for _ in range(20):
            closing = Wakeups(folder, lambda w: None)
            closing.close()
            assert closing._name not in {path.name for path in folder.iterdir()}
    finally:
        sending.clear()
        sender.join()
        busy.close()
