"""The task store's rules, run against both stores: SQLite and PostgreSQL (``store_kind``).

The tests at the end are PostgreSQL's own: several stores on one database, as replicas.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from darkroom.contract.events import EventKind, Stage
from darkroom.contract.folders import result_version
from darkroom.contract.tasks import EndedTask, EndedTasks, IdempotencyKeyUsed
from darkroom.contract.webhooks import Attempt, DeliveryState
from darkroom.core.config import Config
from darkroom.core.ids import is_task_id
from darkroom.database.pgstore import _MIGRATIONS, SCHEMA_VERSION, PostgresTaskStore, migrate
from darkroom.database.store import (
    LeasePolicy,
    SqliteTaskStore,
    State,
    TaskCancelled,
    TaskConflict,
    TaskNotFound,
    TaskStore,
)
from harness.launch import wait_until

POLICY = LeasePolicy(lease_seconds=10, max_attempts=2, upload_timeout_seconds=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class StoreOpener:
    """Opens stores of one kind on one place (a file, a database), as often as a test asks;
    closes them all at the end."""

    def __init__(self, kind: str, place: str) -> None:
        self.kind, self.place = kind, place
        self.opened: list[TaskStore] = []

    @property
    def store_class(self) -> type:
        return SqliteTaskStore if self.kind == "sqlite" else PostgresTaskStore

    def open(self, policy: LeasePolicy = POLICY, mixin: type | None = None, **kwargs) -> TaskStore:
        cls = self.store_class if mixin is None else type("Mixed", (mixin, self.store_class), {})
        place = Path(self.place) if self.kind == "sqlite" else self.place
        store = cls(place, policy, **kwargs)
        self.opened.append(store)
        return store

    @contextlib.contextmanager
    def write_locked(self) -> Iterator[None]:
        """Another writer holds every task: SQLite's write lock, or every row lock in PostgreSQL."""
        if self.kind == "sqlite":
            other = sqlite3.connect(self.place, isolation_level=None, timeout=0)
            other.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                other.execute("ROLLBACK")
                other.close()
            return
        with psycopg.connect(self.place) as other:
            other.execute("SELECT id FROM tasks FOR UPDATE").fetchall()
            yield
            other.rollback()

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request, tmp_path) -> Iterator[StoreOpener]:
    if request.param == "sqlite":
        opener = StoreOpener("sqlite", str(tmp_path / "tasks.sqlite3"))
    else:
        opener = StoreOpener("postgresql", request.getfixturevalue("postgres_url"))
    try:
        yield opener
    finally:
        opener.close_all()


@pytest.fixture
def store(store_kind, clock) -> TaskStore:
    return store_kind.open(clock=clock)


def queued(store: TaskStore, pipeline: str = "swap") -> str:
    task = store.create(pipeline)
    store.enqueue(task.id)
    return task.id


def test_ids_are_unguessable_and_distinct(store):
    ids = {store.create("swap").id for _ in range(50)}
    assert len(ids) == 50
    assert all(is_task_id(task_id) for task_id in ids)


def test_uploading_task_is_not_claimable(store):
    task = store.create("swap")
    assert task.state == State.UPLOADING
    assert store.claim() is None
    store.enqueue(task.id)
    claimed = store.claim()
    assert claimed is not None and claimed.id == task.id


def test_claims_oldest_first_with_a_lease(store, clock):
    first = queued(store)
    clock.now += 1
    second = queued(store)
    claim = store.claim()
    assert claim.id == first
    assert claim.state == State.IN_PROGRESS
    assert claim.attempts == 1
    assert claim.lease_token and claim.lease_expires_at == clock.now + 10
    assert store.claim().id == second
    assert store.claim() is None


def test_finish_only_by_lease_holder_and_idempotent(store):
    task_id = queued(store)
    claim = store.claim()
    with pytest.raises(TaskConflict, match="lease"):
        store.finish(task_id, "not-the-lease")
    assert store.finish(task_id, claim.lease_token).state == State.FINISHED
    assert store.finish(task_id, claim.lease_token).state == State.FINISHED


def test_finished_task_never_goes_back(store, clock):
    task_id = queued(store)
    claim = store.claim()
    store.finish(task_id, claim.lease_token)
    clock.now += 1000
    assert store.get(task_id).state == State.FINISHED
    with pytest.raises(TaskConflict):
        store.fail(task_id, claim.lease_token, "late", retryable=True)
    with pytest.raises(TaskConflict):
        store.release(task_id, claim.lease_token)
    with pytest.raises(TaskConflict):
        store.retry(task_id)


def test_expired_lease_requeues_then_fails_after_max_attempts(store, clock):
    task_id = queued(store)
    first = store.claim()
    clock.now += 11
    second = store.claim()
    assert second.id == task_id and second.attempts == 2
    assert second.lease_token != first.lease_token
    with pytest.raises(TaskConflict, match="lease"):
        store.finish(task_id, first.lease_token)
    clock.now += 11
    assert store.claim() is None
    failed = store.get(task_id)
    assert failed.state == State.FAILED
    assert "lease expired 2 times" in failed.error
    assert store.lease_expiries == 2


def test_heartbeat_extends_the_lease(store, clock):
    task_id = queued(store)
    claim = store.claim()
    clock.now += 8
    store.heartbeat(task_id, claim.lease_token)
    clock.now += 8
    assert store.claim() is None, "the lease was extended, so the task is still held"
    assert store.finish(task_id, claim.lease_token).state == State.FINISHED


def test_holder_may_finish_after_expiry_while_nobody_else_holds_it(store, clock):
    task_id = queued(store)
    claim = store.claim()
    clock.now += 11
    assert store.get(task_id).state == State.QUEUED
    assert store.finish(task_id, claim.lease_token).state == State.FINISHED
    assert store.claim() is None


def test_permanent_failure_keeps_reason(store):
    task_id = queued(store)
    claim = store.claim()
    failed = store.fail(task_id, claim.lease_token, "not an image", retryable=False)
    assert failed.state == State.FAILED and failed.error == "not an image"
    assert store.fail(task_id, claim.lease_token, "again", retryable=False).error == "not an image"


def test_retryable_failure_requeues_until_attempts_run_out(store):
    task_id = queued(store)
    claim = store.claim()
    assert store.fail(task_id, claim.lease_token, "storage down", retryable=True).state == (
        State.QUEUED
    )
    claim = store.claim()
    failed = store.fail(task_id, claim.lease_token, "storage down", retryable=True)
    assert failed.state == State.FAILED and failed.attempts == 2


def test_release_does_not_count_as_attempt(store):
    task_id = queued(store)
    claim = store.claim()
    assert store.release(task_id, claim.lease_token).attempts == 0
    assert store.claim().attempts == 1


def test_failing_an_upload_needs_no_lease_but_a_claimed_task_does(store):
    upload = store.create("swap")
    assert store.fail(upload.id, None, "upload failed", retryable=False).state == State.FAILED
    task_id = queued(store)
    store.claim()
    with pytest.raises(TaskConflict):
        store.fail(task_id, None, "nope", retryable=False)


def test_abandoned_upload_fails_after_timeout(store, clock):
    upload = store.create("swap")
    clock.now += 101
    task = store.get(upload.id)
    assert task.state == State.FAILED and task.error == "upload never completed"


def test_a_waiting_task_failed_without_a_lease_is_retried(store):
    task_id = queued(store)
    assert store.fail(task_id, None, "given up", retryable=False).state == State.FAILED
    assert store.retry(task_id).state == State.QUEUED
    assert store.claim().attempts == 1


def test_unknown_task(store):
    with pytest.raises(TaskNotFound):
        store.get("A" * 22)


def test_state_survives_reopening(store_kind, store, clock):
    task_id = queued(store)
    claim = store.claim()
    store.close()
    store_kind.opened.remove(store)
    reopened = store_kind.open(LeasePolicy(lease_seconds=10, max_attempts=2), clock=clock)
    assert reopened.finish(task_id, claim.lease_token).state == State.FINISHED


def test_long_poll_claim_wakes_when_work_arrives(store):
    result = {}

    def claimer() -> None:
        started = time.monotonic()
        result["task"] = store.claim(wait_seconds=5)
        result["waited"] = time.monotonic() - started

    thread = threading.Thread(target=claimer)
    thread.start()
    task_id = queued(store)
    thread.join(10)
    assert result["task"].id == task_id
    assert result["waited"] < 4, "the claim returned on the enqueue, not at its deadline"


def test_a_claim_whose_caller_has_gone_leases_nothing(store):
    # a stopping worker closes its pending claim: a task leased to it would wait for its lease
    task_id = queued(store)
    gone = threading.Event()
    result = {}

    def claimer() -> None:
        result["task"] = store.claim(wait_seconds=5, departed=gone.is_set)

    assert store.claim(wait_seconds=1, departed=lambda: True) is None
    assert store.get(task_id).state == State.QUEUED
    taken = store.claim()  # the claim below waits: the queue is empty
    thread = threading.Thread(target=claimer)
    thread.start()
    gone.set()
    queued(store)  # wakes the claim, whose caller is gone by now
    thread.join(10)
    assert result["task"] is None
    assert store.claim().id != taken.id  # the second task is still there, queued


def _watch_in_thread(store, task_id, while_in, wait_seconds):
    result = {}

    def watcher() -> None:
        started = time.monotonic()
        result["task"] = store.watch(task_id, while_in, wait_seconds)
        result["waited"] = time.monotonic() - started

    thread = threading.Thread(target=watcher)
    thread.start()
    return thread, result


def test_watch_wakes_when_the_task_leaves_the_state(store):
    task_id = queued(store)
    claim = store.claim()
    thread, result = _watch_in_thread(store, task_id, {State.QUEUED, State.IN_PROGRESS}, 5)
    store.finish(task_id, claim.lease_token)
    thread.join(10)
    assert result["task"].state == State.FINISHED
    assert result["waited"] < 4, "the watch returned on the finish, not at its deadline"


def test_watch_ignores_other_tasks_and_returns_unchanged_at_its_deadline(store):
    watched, other = queued(store), queued(store)
    thread, result = _watch_in_thread(store, watched, {State.QUEUED}, 0.3)
    store.cancel(other)
    thread.join(10)
    assert result["task"].id == watched and result["task"].state == State.QUEUED
    assert result["waited"] >= 0.3


def test_watch_answers_at_once_when_the_state_already_differs(store):
    task_id = queued(store)
    assert store.watch(task_id, {State.IN_PROGRESS}, 30).state == State.QUEUED


class CountingReads:
    """Mixed into a store: counts its reads of each task."""

    reads: collections.Counter[str]

    def get(self, task_id: str):
        self.reads[task_id] += 1
        return super().get(task_id)


def test_a_change_wakes_only_the_watchers_of_its_task(store_kind):
    store = store_kind.open(LeasePolicy(), mixin=CountingReads)
    store.reads = collections.Counter()
    watched, other = queued(store), queued(store)
    thread, result = _watch_in_thread(store, watched, {State.QUEUED}, 0.4)
    for _ in range(30):  # 60 state changes of the other task
        store.fail(other, None, "given up", retryable=False)
        store.retry(other)
    thread.join(10)
    assert result["task"].state == State.QUEUED
    # The first read, a wake at 0.5 s at most, the last: not one read per change.
    assert store.reads[watched] <= 3, store.reads
    assert not store._watchers, "the watch is forgotten once it returns"


def test_counts(store):
    queued(store)
    store.create("swap")
    counts = store.counts()
    assert counts[State.QUEUED] == 1 and counts[State.UPLOADING] == 1
    assert counts[State.FINISHED] == 0


def test_purge_removes_only_old_ended_tasks(store, clock):
    done = queued(store)
    store.finish(done, store.claim().lease_token)
    waiting = queued(store)
    clock.now += 50
    assert store.purge(older_than=clock.now - 100) == 0
    assert store.purge(older_than=clock.now) == 1
    with pytest.raises(TaskNotFound):
        store.get(done)
    assert store.get(waiting).state == State.QUEUED


def test_get_is_a_read_that_shows_a_lapsed_lease_as_its_expiry_will_write_it(store_kind, clock):
    store = store_kind.open(LeasePolicy(lease_seconds=10, max_attempts=2), clock=clock)
    requeued, failed = queued(store), queued(store)
    store.claim()
    store.fail(failed, store.claim().lease_token, "crashed", retryable=True)
    store.claim()  # the second attempt at `failed`
    clock.now += 11
    # Another writer holds the tasks: a get that wanted them would wait, then fail.
    with store_kind.write_locked():
        started = time.monotonic()
        seen = {task_id: store.get(task_id) for task_id in (requeued, failed)}
        assert time.monotonic() - started < 1.0
    assert seen[requeued].state == State.QUEUED
    assert seen[requeued].error == "worker stopped responding"
    assert seen[failed].state == State.FAILED
    assert seen[failed].error == "lease expired 2 times; last error: crashed"
    assert store.lease_expiries == 0, "a read writes nothing"
    assert store.counts()[State.IN_PROGRESS] == 2, "the rows are unchanged until the sweep"

    assert store.expire() == 2
    assert {task_id: store.get(task_id) for task_id in seen} == seen
    assert store.lease_expiries == 2
    assert store.expire() == 0


def test_a_change_to_a_lapsed_task_starts_from_what_get_showed(store, clock):
    task_id = queued(store)
    claim = store.claim()
    clock.now += 11
    assert store.get(task_id).state == State.QUEUED
    with pytest.raises(TaskConflict, match="queued"):
        store.heartbeat(task_id, claim.lease_token)
    upload = store.create("swap")
    clock.now += 101
    assert store.get(upload.id).state == State.FAILED
    with pytest.raises(TaskConflict, match="failed"):
        store.enqueue(upload.id)


class StallingClock(Clock):
    """A clock that, once armed, stalls the first caller until released: a write transaction
    (which reads the clock for ``updated_at``) then stays open as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.armed, self.stalled, self.release = False, threading.Event(), threading.Event()

    def __call__(self) -> float:
        if self.armed:
            self.armed = False
            self.stalled.set()
            self.release.wait(10)
        return self.now


def test_reads_do_not_wait_for_a_write_transaction(store_kind):
    clock = StallingClock()
    store = store_kind.open(LeasePolicy(), clock=clock)
    task_id = queued(store)
    claim = store.claim()
    finishing = threading.Thread(target=store.finish, args=(task_id, claim.lease_token))
    clock.armed = True
    finishing.start()
    try:
        assert clock.stalled.wait(10), "the finish is inside its transaction"
        started = time.monotonic()
        assert store.get(task_id).state == State.IN_PROGRESS, "the last commit is what is read"
        assert store.counts()[State.IN_PROGRESS] == 1
        assert time.monotonic() - started < 1, "the read did not wait for the transaction"
    finally:
        clock.release.set()
        finishing.join(10)
    assert store.get(task_id).state == State.FINISHED


def test_a_watcher_is_woken_once_the_change_is_committed(store):
    """Woken before the commit, its read (on the read connection) would see the old state and
    it would sleep until its next half-second tick."""
    task_id = queued(store)
    claim = store.claim()
    seen: list = []
    watcher = threading.Thread(
        target=lambda: seen.append(store.watch(task_id, {State.IN_PROGRESS}, 10))
    )
    watcher.start()
    time.sleep(0.1)  # let the watcher block on its event (a read tick, not a deadline)
    started = time.monotonic()
    store.finish(task_id, claim.lease_token)
    watcher.join(10)
    assert seen[0].state == State.FINISHED
    assert time.monotonic() - started < 0.4, "woken by the change, not by its next tick"


def test_a_finished_tasks_notes_are_kept(store):
    task_id = queued(store)
    claim = store.claim()
    notes = ["animation kept", "metadata removed: EXIF (GPS position), XMP"]
    finished = store.finish(task_id, claim.lease_token, notes)
    assert store.get(task_id).notes == finished.notes == tuple(notes)
    assert finished.error == "; ".join(notes)
    other = queued(store)
    assert store.finish(other, store.claim().lease_token).notes == ()


def test_a_file_made_before_notes_gets_the_column(tmp_path, clock):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, state INTEGER NOT NULL, pipeline TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, error TEXT, lease_token TEXT,"
        " lease_expires_at REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " finished_at REAL);"
        "INSERT INTO tasks (id, state, pipeline, created_at, updated_at)"
        f" VALUES ('{'A' * 22}', 0, 'swap', 1, 1);"
    )
    old.commit()
    old.close()
    store = SqliteTaskStore(path, LeasePolicy(), clock=clock)
    assert store.get("A" * 22).notes == ()
    claim = store.claim()
    assert store.finish(claim.id, claim.lease_token, ["kept"]).notes == ("kept",)


# -- webhook deliveries -------------------------------------------------------------------
HOOK = "https://hooks.example/in?token=abc"


def ended_with_webhook(store, clock, finish: bool = True) -> str:
    task = store.create("swap", webhook_url=HOOK)
    store.enqueue(task.id)
    claim = store.claim()
    if finish:
        store.finish(task.id, claim.lease_token)
    else:
        store.fail(task.id, claim.lease_token, "cannot decode", retryable=False)
    return task.id


def test_a_delivery_waits_for_its_job_to_end(store, clock):
    task = store.create("swap", webhook_url=HOOK)
    assert store.create("swap").id and store.delivery(store.create("swap").id) is None
    delivery = store.delivery(task.id)
    assert (delivery.url, delivery.state, delivery.due_at, delivery.attempts) == (
        HOOK,
        DeliveryState.PENDING,
        None,
        0,
    )
    store.enqueue(task.id)
    claim = store.claim()
    assert store.claim_delivery(30) is None, "not due while the job runs"
    store.finish(task.id, claim.lease_token)
    delivery = store.delivery(task.id)
    assert delivery.due_at == clock.now and delivery.ended_at == clock.now
    assert delivery.sequence == 1


@pytest.mark.parametrize(
    "ending", ["finished", "failed", "lease expired", "upload abandoned", "cancelled"]
)
def test_every_ending_makes_the_delivery_due(store, clock, ending):
    task = store.create("swap", webhook_url=HOOK)
    if ending == "cancelled":
        store.cancel(task.id)
    elif ending == "upload abandoned":
        clock.now += 101  # past the upload timeout: the lapse is written by the sweep
        assert store.expire() == 1
    else:
        store.enqueue(task.id)
        claim = store.claim()
        if ending == "finished":
            store.finish(task.id, claim.lease_token)
        elif ending == "failed":
            store.fail(task.id, claim.lease_token, "bad", retryable=False)
        else:
            for _ in range(2):  # max_attempts: the second expiry fails it
                clock.now += 11
                store.claim()
            clock.now += 11
            store.expire()
    assert store.get(task.id).state.ended
    claimed = store.claim_delivery(30)
    assert claimed is not None and claimed.task_id == task.id


def test_a_claimed_delivery_is_leased_to_one_master_until_its_lease_runs_out(store, clock):
    task_id = ended_with_webhook(store, clock)
    first = store.claim_delivery(30)
    assert first.lease_token and first.lease_expires_at == clock.now + 30
    assert store.claim_delivery(30) is None, "held by the first master"
    clock.now += 31  # that master died mid-attempt
    second = store.claim_delivery(30)
    assert second.task_id == task_id and second.lease_token != first.lease_token
    with pytest.raises(TaskConflict, match="lease"):
        store.report_delivery(task_id, first.lease_token, Attempt(clock.now, 200), None)


def test_attempts_are_recorded_until_delivered(store, clock):
    task_id = ended_with_webhook(store, clock)
    for n, status in enumerate((500, 503), 1):
        claimed = store.claim_delivery(30)
        delivery = store.report_delivery(
            task_id, claimed.lease_token, Attempt(clock.now, status), retry_in=7
        )
        assert (delivery.state, delivery.attempts, delivery.due_at) == (
            DeliveryState.PENDING,
            n,
            clock.now + 7,
        )
        assert store.claim_delivery(30) is None, "not due before its retry time"
        clock.now += 7
    claimed = store.claim_delivery(30)
    delivery = store.report_delivery(task_id, claimed.lease_token, Attempt(clock.now, 204), None)
    assert (delivery.state, delivery.attempts, delivery.due_at) == (
        DeliveryState.DELIVERED,
        3,
        None,
    )
    assert [a.status for a in delivery.last] == [500, 503, 204]
    assert store.claim_delivery(30) is None


def test_a_delivery_with_no_retry_left_fails_and_keeps_the_last_attempts(store, clock):
    task_id = ended_with_webhook(store, clock, finish=False)
    for n in range(7):
        claimed = store.claim_delivery(30)
        attempt = Attempt(clock.now + n, error=f"timed out {n}")
        delivery = store.report_delivery(
            task_id, claimed.lease_token, attempt, 0 if n < 6 else None
        )
    assert delivery.state == DeliveryState.FAILED and delivery.attempts == 7
    assert [a.error for a in delivery.last] == [f"timed out {n}" for n in range(2, 7)]
    assert store.delivery(task_id) == delivery, "the same when read again"


def test_a_job_that_ends_again_after_a_retry_makes_a_new_message(store, clock):
    task_id = ended_with_webhook(store, clock, finish=False)
    claimed = store.claim_delivery(30)
    store.report_delivery(task_id, claimed.lease_token, Attempt(clock.now, 200), None)
    store.retry(task_id)
    assert store.claim_delivery(30) is None, "the retried job has not ended yet"
    claim = store.claim()
    store.finish(task_id, claim.lease_token)
    again = store.claim_delivery(30)
    assert (again.sequence, again.attempts, again.state) == (2, 0, DeliveryState.PENDING)


def test_deliveries_survive_reopening_and_go_with_their_purged_tasks(store_kind, store, clock):
    task_id = ended_with_webhook(store, clock)
    store.close()
    reopened = store_kind.open(LeasePolicy(), clock=clock)
    assert reopened.claim_delivery(30).task_id == task_id
    clock.now += 10
    assert reopened.purge(clock.now) == 1
    assert reopened.delivery(task_id) is None
    with pytest.raises(TaskNotFound):
        reopened.report_delivery(task_id, "lease", Attempt(clock.now, 200), None)


# -- cancel ---------------------------------------------------------------------------------
def test_a_cancelled_queued_task_is_ended_and_never_claimed(store, clock):
    task_id = queued(store)
    clock.now += 5
    cancelled = store.cancel(task_id)
    assert cancelled.state == State.CANCELLED and cancelled.state.ended
    assert cancelled.finished_at == clock.now and cancelled.lease_token is None
    assert store.claim() is None
    clock.now += 5
    assert store.cancel(task_id) == cancelled, "cancelling again changes nothing"


def test_the_holder_of_a_cancelled_task_is_refused_as_cancelled(store):
    task_id = queued(store)
    claim = store.claim()
    cancelled = store.cancel(task_id)
    assert cancelled.lease_token is None and cancelled.lease_expires_at is None
    for call in (
        lambda: store.heartbeat(task_id, claim.lease_token),
        lambda: store.finish(task_id, claim.lease_token, ["kept"]),
        lambda: store.fail(task_id, claim.lease_token, "boom", retryable=True),
        lambda: store.release(task_id, claim.lease_token),
    ):
        with pytest.raises(TaskCancelled):
            call()
    assert store.get(task_id).state == State.CANCELLED
    assert store.finishes_refused == 0, "a cancelled task's finish is not work done twice"


def test_a_cancelled_task_outlives_the_lease_it_had(store, clock):
    task_id = queued(store)
    store.claim()
    store.cancel(task_id)
    clock.now += 1000
    assert store.get(task_id).state == State.CANCELLED
    assert store.expire() == 0 and store.claim() is None


def test_an_upload_cancelled_before_it_is_stored_is_not_queued(store):
    upload = store.create("swap")
    store.cancel(upload.id)
    with pytest.raises(TaskCancelled):
        store.enqueue(upload.id)


@pytest.mark.parametrize("ending", ["finish", "fail"])
def test_an_ended_task_is_not_cancelled(store, ending):
    task_id = queued(store)
    claim = store.claim()
    if ending == "finish":
        store.finish(task_id, claim.lease_token)
    else:
        store.fail(task_id, claim.lease_token, "corrupt", retryable=False)
    with pytest.raises(TaskConflict, match=r"finished|failed") as refused:
        store.cancel(task_id)
    assert not isinstance(refused.value, TaskCancelled)


def test_cancelled_tasks_are_purged_with_the_other_ended_ones(store, clock):
    task_id = queued(store)
    store.cancel(task_id)
    assert store.counts()[State.CANCELLED] == 1
    assert store.purge(older_than=clock.now - 1) == 0
    assert store.purge(older_than=clock.now + 1) == 1
    with pytest.raises(TaskNotFound):
        store.get(task_id)


def test_a_cancelled_task_is_not_retried(store):
    task_id = queued(store)
    store.cancel(task_id)
    with pytest.raises(TaskConflict, match="cancelled"):
        store.retry(task_id)


# -- idempotency keys -----------------------------------------------------------------------
SHA = "ab" * 32


def test_a_kept_key_names_its_task_instead_of_creating_another(store):
    first = store.create("swap", idempotency_key="key-1")
    assert first.idempotency_key == "key-1"
    with pytest.raises(IdempotencyKeyUsed) as uploading:
        store.create("grayscale", idempotency_key="key-1")
    holder = uploading.value.holder
    assert (holder.task_id, holder.pipeline, holder.state) == (first.id, "swap", State.UPLOADING)
    assert holder.body_sha256 is None, "no fingerprint while the first upload streams"
    store.enqueue(first.id, body_sha256=SHA)
    with pytest.raises(IdempotencyKeyUsed) as queued_:
        store.create("swap", idempotency_key="key-1")
    assert queued_.value.holder.body_sha256 == SHA
    assert queued_.value.holder.state == State.QUEUED
    assert store.counts()[State.QUEUED] == 1 and store.counts()[State.UPLOADING] == 0
    assert store.create("swap", idempotency_key="key-2").id != first.id
    assert store.create("swap").idempotency_key is None


def test_a_key_names_its_task_in_any_later_state(store):
    task = store.create("swap", idempotency_key="k")
    store.enqueue(task.id, body_sha256=SHA)
    claim = store.claim()
    store.fail(task.id, claim.lease_token, "corrupt", retryable=False)
    with pytest.raises(IdempotencyKeyUsed) as used:
        store.create("swap", idempotency_key="k")
    assert used.value.holder.state == State.FAILED and used.value.holder.task_id == task.id


@pytest.mark.parametrize("ending", ["abandoned", "timed out", "cancelled"])
def test_a_key_whose_upload_never_completed_is_free_again(store, clock, ending):
    first = store.create("swap", idempotency_key="k")
    if ending == "abandoned":
        store.fail(first.id, None, "upload failed: storage full", retryable=False)
    elif ending == "timed out":
        clock.now += 101
    else:
        store.cancel(first.id)
    second = store.create("swap", idempotency_key="k")
    assert second.id != first.id
    with pytest.raises(IdempotencyKeyUsed) as used:
        store.create("swap", idempotency_key="k")
    assert used.value.holder.task_id == second.id


def test_a_key_is_kept_for_its_period_only(store, clock):
    first = store.create("swap", idempotency_key="k")
    store.enqueue(first.id, body_sha256=SHA)
    clock.now += Config.idempotency_seconds - 1
    with pytest.raises(IdempotencyKeyUsed):
        store.create("swap", idempotency_key="k")
    clock.now += 2
    assert store.create("swap", idempotency_key="k").id != first.id


def test_a_key_whose_task_was_purged_is_free(store, clock):
    first = store.create("swap", idempotency_key="k")
    store.cancel(first.id)
    store.purge(older_than=clock.now + 1)
    assert store.create("swap", idempotency_key="k").id != first.id


def test_keys_are_kept_across_a_restart(store_kind, store, clock):
    first = store.create("swap", idempotency_key="k")
    store.enqueue(first.id, body_sha256=SHA)
    store.close()
    reopened = store_kind.open(LeasePolicy(), clock=clock)
    with pytest.raises(IdempotencyKeyUsed) as used:
        reopened.create("swap", idempotency_key="k")
    assert used.value.holder.task_id == first.id


def test_purge_forgets_old_keys_and_those_of_purged_tasks(store, clock):
    day_old = store.create("swap", idempotency_key="day-old")
    store.enqueue(day_old.id, body_sha256=SHA)
    clock.now += Config.idempotency_seconds / 2
    store.cancel(store.create("swap", idempotency_key="purged").id)
    recent = store.create("swap", idempotency_key="recent")
    store.enqueue(recent.id, body_sha256=SHA)
    clock.now += Config.idempotency_seconds / 2 + 1
    assert store.purge(older_than=clock.now - 10) == 1  # the cancelled task
    keys = {row[0] for row in store._read("SELECT key FROM idempotency_keys")}
    assert keys == {"recent"}
    assert store.get(day_old.id).state == State.QUEUED, "the task outlives its key"


# -- events (issue 16's live progress) ---------------------------------------------------------


def states_of(events) -> list[str]:
    return [event.data["state"] for event in events if event.kind == EventKind.STATE]


def test_every_state_change_is_an_event_numbered_in_order(store, clock):
    task_id = queued(store)
    claim = store.claim()
    clock.now += 1
    store.fail(task_id, claim.lease_token, "flaky", retryable=True)
    claim = store.claim()
    store.finish(task_id, claim.lease_token)
    events = store.events(task_id)
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert states_of(events) == [
        "uploading",
        "queued",
        "in progress",
        "queued",
        "in progress",
        "finished",
    ]
    assert events[3].at == clock.now and events[0].at == clock.now - 1
    assert [event.sequence for event in store.events(task_id, after=4)] == [5, 6]
    assert store.events(task_id, after=6) == []


def test_a_lapse_is_an_event_like_any_change(store, clock):
    task_id = queued(store)
    store.claim()
    clock.now += 11
    assert store.expire() == 1
    assert states_of(store.events(task_id))[-1] == "queued"
    store.claim()
    clock.now += 11
    store.expire()
    assert states_of(store.events(task_id))[-2:] == ["in progress", "failed"]
    upload = store.create("swap").id
    clock.now += 101
    store.get(upload)  # a read writes nothing, and so tells no event
    assert states_of(store.events(upload)) == ["uploading"]
    store.expire()
    assert states_of(store.events(upload)) == ["uploading", "failed"]


def test_stages_are_events_in_order_before_the_finished_state(store):
    task_id = queued(store)
    claim = store.claim()
    download, decode = Stage("download", 0.0, 2.5), Stage("decode", 2.5, 4.0)
    assert store.get(task_id).stage is None
    store.heartbeat(task_id, claim.lease_token, stages=[download, decode])
    assert store.get(task_id).stage == "decode"  # the stage reached, for /status
    rest = [Stage("resize:10x10", 6.5, 1.0), Stage("encode", 7.5, 3.0), Stage("store", 10.5, 2)]
    store.finish(task_id, claim.lease_token, stages=rest)
    events = store.events(task_id, after=3)  # after uploading, queued, in progress
    assert [(event.kind, event.sequence) for event in events] == [
        *((EventKind.STAGE, n) for n in range(4, 9)),
        (EventKind.STATE, 9),
    ]
    assert [event.data for event in events[:5]] == [
        stage.document() for stage in [download, decode, *rest]
    ]
    assert events[-1].data == {"state": "finished"}
    assert store.get(task_id).stage == "store"


def test_a_failures_stages_come_before_its_state(store):
    task_id = queued(store)
    claim = store.claim()
    store.fail(task_id, claim.lease_token, "bad", retryable=False, stages=[Stage("decode", 1, 2)])
    kinds = [(event.kind, event.data) for event in store.events(task_id, after=3)]
    assert kinds == [
        (EventKind.STAGE, {"stage": "decode", "startMs": 1.0, "durationMs": 2.0}),
        (EventKind.STATE, {"state": "failed"}),
    ]


def test_a_refused_finish_writes_no_stage(store):
    task_id = queued(store)
    store.claim()
    with pytest.raises(TaskConflict):
        store.finish(task_id, "not the lease", stages=[Stage("encode", 0, 1)])
    assert all(event.kind == EventKind.STATE for event in store.events(task_id))


def test_waiting_for_events_wakes_on_a_new_one(store):
    task_id = queued(store)
    claim = store.claim()
    seen = store.events(task_id)[-1].sequence
    threading.Timer(
        0.2, lambda: store.heartbeat(task_id, claim.lease_token, stages=[Stage("download", 0, 1)])
    ).start()
    started = time.monotonic()
    events = store.events(task_id, after=seen, wait_seconds=10)
    assert time.monotonic() - started < 5
    assert [event.data["stage"] for event in events] == ["download"]
    started = time.monotonic()
    assert store.events(task_id, after=seen + 1, wait_seconds=0.2) == []
    assert time.monotonic() - started >= 0.2


def test_events_of_an_unknown_task(store):
    with pytest.raises(TaskNotFound):
        store.events("A" * 22)


def test_a_purged_tasks_events_go_with_it(store, clock):
    task_id = queued(store)
    store.finish(task_id, store.claim().lease_token)
    kept = queued(store)
    assert store.purge(older_than=clock.now + 1) == 1
    assert store._read("SELECT DISTINCT task_id FROM events") == [(kept,)]


class SynchronousRecorded(SqliteTaskStore):
    """SQLite's store, noting ``PRAGMA synchronous`` as each state change is written."""

    def _append_state_event(self, task_id: str, state: State) -> None:
        self.synchronous.append((state, self._db.execute("PRAGMA synchronous").fetchone()[0]))
        super()._append_state_event(task_id, state)


def test_only_the_changes_a_reply_promises_wait_for_the_disk(tmp_path, clock):
    store = SynchronousRecorded(tmp_path / "tasks.sqlite3", POLICY, clock=clock)
    store.synchronous = []
    task_id = queued(store)
    store.finish(task_id, store.claim().lease_token)
    full, normal = 2, 1
    assert store.synchronous == [
        (State.UPLOADING, normal),  # durable with the enqueue that acknowledges the upload
        (State.QUEUED, full),
        (State.IN_PROGRESS, normal),  # a claim lost in a power cut: queued again
        (State.FINISHED, full),
    ]
    store.close()


# -- the feed of ended tasks ---------------------------------------------------------------
def ends_after(store: TaskStore, start: EndedTasks, count: int, wait: float = 5.0) -> list:
    """The first ``count`` ends after ``start`` (PostgreSQL's come by NOTIFY, a moment later)."""
    ended, position, deadline = [], start.position, time.monotonic() + wait
    while len(ended) < count and time.monotonic() < deadline:
        answer = store.ended(start.epoch, position, deadline - time.monotonic())
        assert not answer.reset and answer.epoch == start.epoch
        ended += answer.ended
        position = answer.position
    return ended


@pytest.mark.parametrize(
    ("ending", "state"),
    [
        ("finished", State.FINISHED),
        ("failed", State.FAILED),
        ("lease expired", State.FAILED),
        ("upload abandoned", State.FAILED),
        ("cancelled", State.CANCELLED),
    ],
)
def test_every_ending_is_in_the_feed_of_ended_tasks(store, clock, ending, state):
    start = store.ended(None, 0)
    assert start.reset  # a new follower starts where the feed is
    task = store.create("swap")
    lease = None
    if ending == "cancelled":
        store.cancel(task.id)
    elif ending == "upload abandoned":
        clock.now += 101
        store.expire()
    else:
        store.enqueue(task.id)
        lease = store.claim().lease_token
        if ending == "finished":
            store.finish(task.id, lease)
        elif ending == "failed":
            store.fail(task.id, lease, "bad", retryable=False)
        else:
            for _ in range(2):
                clock.now += 11
                store.claim()
            clock.now += 11
            store.expire()
    assert ends_after(store, start, 1) == [
        EndedTask(task.id, state, result_version(lease) if state == State.FINISHED else None)
    ]


def test_the_feed_has_the_ends_in_order_and_no_other_change(store):
    start = store.ended(None, 0)
    first, second, third = queued(store), queued(store), queued(store)
    leases = {}
    for _ in range(3):
        claim = store.claim()
        leases[claim.id] = claim.lease_token
    store.release(third, leases[third])  # queued again: not an end
    store.heartbeat(first, leases[first])
    store.finish(second, leases[second])
    store.fail(first, leases[first], "bad", retryable=False)
    assert [task.task_id for task in ends_after(store, start, 2)] == [second, first]
    answer = store.ended(start.epoch, start.position + 2, wait_seconds=0.3)
    assert answer.ended == () and answer.position == start.position + 2


def test_a_follower_of_another_epoch_starts_over(store):
    queued(store)
    answer = store.ended("0123456789abcdef", 0)
    assert answer.reset and answer.ended == ()


# -- PostgreSQL: several stores on one database, as replicas ----------------------------


@pytest.fixture
def replicas(postgres_url) -> Iterator[tuple[PostgresTaskStore, PostgresTaskStore]]:
    opener = StoreOpener("postgresql", postgres_url)
    try:
        yield opener.open(LeasePolicy()), opener.open(LeasePolicy())
    finally:
        opener.close_all()


def test_replicas_claim_disjoint_tasks_under_concurrency(replicas):
    task_ids = {queued(replicas[0]) for _ in range(60)}
    claimed: list[str] = []
    claimed_lock = threading.Lock()

    def claim_until_empty(store: PostgresTaskStore) -> None:
        for _ in range(200):  # more than enough for 60 tasks; bounded all the same
            task = store.claim()
            if task is None:
                return
            with claimed_lock:
                claimed.append(task.id)

    claimers = [replica for replica in replicas for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(claimers)) as pool:
        list(pool.map(claim_until_empty, claimers, timeout=60))
    assert len(claimed) == len(set(claimed)), "a task was claimed twice"
    assert set(claimed) == task_ids


def _timed_in_thread(call) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        result["value"] = call()
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_an_enqueue_on_one_replica_wakes_a_claim_waiting_on_the_other(replicas):
    first, second = replicas
    upload = first.create("swap")
    thread, result = _timed_in_thread(lambda: second.claim(wait_seconds=10))
    time.sleep(0.2)  # the claim is waiting: it found nothing at first
    enqueued_at = time.monotonic()
    first.enqueue(upload.id)
    thread.join(15)
    assert result["value"].id == upload.id
    # its half-second tick would take up to 0.5 s: the NOTIFY came before
    assert result["at"] - enqueued_at < 0.3


def test_a_finish_on_one_replica_wakes_a_watch_on_the_other(replicas):
    first, second = replicas
    task_id = queued(first)
    claim = first.claim()
    thread, result = _timed_in_thread(lambda: second.watch(task_id, {State.IN_PROGRESS}, 10))
    time.sleep(0.2)
    finished_at = time.monotonic()
    first.finish(task_id, claim.lease_token)
    thread.join(15)
    assert result["value"].state == State.FINISHED
    assert result["at"] - finished_at < 0.3


def test_one_idempotency_key_used_on_two_replicas_at_once_gives_one_task(replicas):
    start = threading.Barrier(2)

    def create(store: PostgresTaskStore, key: str) -> str:
        start.wait(10)
        try:
            return store.create("swap", idempotency_key=key).id
        except IdempotencyKeyUsed as used:
            return f"used:{used.holder.task_id}"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for n in range(20):  # a race lost once in a while shows within a few rounds
            outcomes = list(pool.map(create, replicas, [f"key-{n}"] * 2, timeout=30))
            used = [outcome for outcome in outcomes if outcome.startswith("used:")]
            created = [outcome for outcome in outcomes if not outcome.startswith("used:")]
            assert used == [f"used:{created[0]}"], f"round {n}: {outcomes}"


def test_a_delivery_another_replica_is_claiming_is_skipped_not_waited_for(replicas, postgres_url):
    first, second = replicas
    task_id = ended_with_webhook(first, time.time)
    with psycopg.connect(postgres_url) as other:
        other.execute("SELECT task_id FROM webhooks FOR UPDATE").fetchall()
        thread, result = _timed_in_thread(lambda: second.claim_delivery(30))
        thread.join(2)
        waited = thread.is_alive()
        other.rollback()  # lets a claim that waits go on, so the test fails rather than hangs
    thread.join(10)
    assert not waited, "the claim waited for the row another replica holds"
    assert result["value"] is None
    assert second.claim_delivery(30).task_id == task_id
    assert first.claim_delivery(30) is None, "leased to the second"


def test_replicas_claiming_deliveries_at_once_take_each_once(replicas):
    task_ids = {ended_with_webhook(replicas[0], time.time) for _ in range(20)}
    claimed: list[str] = []
    claimed_lock = threading.Lock()

    def claim_until_none(store: PostgresTaskStore) -> None:
        for _ in range(100):
            delivery = store.claim_delivery(60)
            if delivery is None:
                return
            with claimed_lock:
                claimed.append(delivery.task_id)

    claimers = [replica for replica in replicas for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(len(claimers)) as pool:
        list(pool.map(claim_until_none, claimers, timeout=60))
    assert sorted(claimed) == sorted(task_ids), "each delivery claimed exactly once"


def test_a_stage_on_one_replica_wakes_events_waiting_on_the_other(replicas):
    first, second = replicas
    task_id = queued(first)
    claim = first.claim()
    seen = second.events(task_id)[-1].sequence
    thread, result = _timed_in_thread(lambda: second.events(task_id, after=seen, wait_seconds=10))
    time.sleep(0.2)
    sent_at = time.monotonic()
    first.heartbeat(task_id, claim.lease_token, stages=[Stage("download", 0, 1)])
    thread.join(15)
    assert [event.data["stage"] for event in result["value"]] == ["download"]
    # no state changed: only the event's own NOTIFY wakes it (long polls on events do not
    # tick: without it, at its 10 s deadline); a bound far from both, for a loaded machine
    assert result["at"] - sent_at < 5


def test_events_written_on_two_replicas_at_once_are_numbered_without_gaps(replicas):
    task_id = queued(replicas[0])
    claim = replicas[0].claim()

    def send_stages(store: PostgresTaskStore) -> None:
        for n in range(15):
            store.heartbeat(task_id, claim.lease_token, stages=[Stage(f"step{n}", n, 1)])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(send_stages, [*replicas, *replicas], timeout=60))
    events = replicas[1].events(task_id)
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert sum(event.kind == EventKind.STAGE for event in events) == 60


def test_migrations_run_from_two_places_at_once_are_safe(postgres_url):
    start = threading.Barrier(2)

    def migrate_now() -> int:
        with psycopg.connect(postgres_url) as conn:
            start.wait(10)
            return migrate(conn)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        found = sorted(pool.map(lambda _: migrate_now(), range(2), timeout=60))
    assert found == [0, SCHEMA_VERSION], "one migrated, the other found it done"
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_database_of_the_first_schema_is_migrated_with_its_tasks(postgres_url, clock):
    with psycopg.connect(postgres_url) as conn:  # as the release before issue 16 left it
        conn.execute(_MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO tasks (id, state, pipeline, created_at, updated_at)"
            " VALUES (%s, %s, 'swap', %s, %s)",
            ("A" * 22, State.QUEUED.code, clock.now, clock.now),
        )
    opener = StoreOpener("postgresql", postgres_url)
    try:
        store = opener.open(clock=clock)
        assert store.events("A" * 22) == [], "a task from before events has none"
        claim = store.claim()
        assert (claim.id, claim.stage, claim.idempotency_key) == ("A" * 22, None, None)
        assert states_of(store.events(claim.id)) == ["in progress"]
        store.cancel(claim.id)
        clock.now += 10
        assert store.purge(clock.now) == 1, "a cancelled task is retention's too"
    finally:
        opener.close_all()


def test_a_store_outlives_a_postgresql_restart(postgres_server, postgres_url, clock):
    opener = StoreOpener("postgresql", postgres_url)
    try:
        store = opener.open(clock=clock)
        task_id = queued(store)
        before = store.ended(None, 0)
        postgres_server.restart()
        assert store.get(task_id).state == State.QUEUED, "a dropped connection is replaced"
        claim = store.claim()
        assert claim.id == task_id
        # the listener is back: a change wakes a watch at once again
        assert store.wait_listening(10)
        # and ends sent while it was away may be lost: the feed's followers start over
        wait_until(lambda: store.ended(before.epoch, before.position).reset, 10, "a new epoch")
        thread, result = _timed_in_thread(lambda: store.watch(task_id, {State.IN_PROGRESS}, 10))
        time.sleep(0.2)
        finished_at = time.monotonic()
        store.finish(task_id, claim.lease_token)
        thread.join(15)
        assert result["value"].state == State.FINISHED
        assert result["at"] - finished_at < 0.3
    finally:
        opener.close_all()


def test_each_replicas_feed_has_every_replicas_ends(replicas):
    first, second = replicas
    starts = [replica.ended(None, 0) for replica in replicas]
    by_first, by_second = queued(first), queued(second)
    first.cancel(by_first)
    second.cancel(by_second)
    for replica, start in zip(replicas, starts, strict=True):
        ended = [task.task_id for task in ends_after(replica, start, 2)]
        assert ended == [by_first, by_second]
