"""Task records and their life cycle, behind an interface a PostgreSQL store can implement too.

A claim gives a task a lease (token and expiry). Only the lease holder may extend, finish or
fail it. An expired lease puts the task back in the queue; after ``max_attempts`` claims the
task fails, keeping the last error. A finished task never changes again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from darkroom.contract.limits import MAX_ERROR_LENGTH
from darkroom.contract.tasks import TaskState
from darkroom.core.atomicfile import create_private_file, make_private_directory
from darkroom.core.config import Config
from darkroom.core.ids import new_lease_token, new_task_id

# The store's name for the contract's task states; stored as their codes (the seed's numbers).
State = TaskState
sqlite3.register_adapter(TaskState, lambda state: state.code)


@dataclasses.dataclass(frozen=True)
class Task:
    id: str
    state: State
    pipeline: str
    attempts: int
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    # a finished task's notes for the user: what was skipped, kept, or removed (metadata)
    notes: tuple[str, ...] = ()


class TaskNotFound(LookupError):
    pass


class TaskConflict(Exception):
    """The request does not fit the task's state or lease; the message says how."""


class StoreUnavailable(Exception):
    """The database behind the store cannot be reached now (a PostgreSQL restart): retry."""


class TaskStore(Protocol):
    # Leases that expired since the store opened (a requeue or a final failure each).
    lease_expiries: int
    # Finishes refused since the store opened: the work of a lost lease, done twice.
    finishes_refused: int

    def create(self, pipeline: str) -> Task: ...
    def enqueue(self, task_id: str) -> Task: ...
    def get(self, task_id: str) -> Task: ...
    def watch(self, task_id: str, while_in: Collection[State], wait_seconds: float) -> Task: ...
    def claim(self, wait_seconds: float = 0.0) -> Task | None: ...
    def heartbeat(self, task_id: str, lease_token: str) -> Task: ...
    def finish(self, task_id: str, lease_token: str, notes: Sequence[str] = ()) -> Task: ...
    def fail(self, task_id: str, lease_token: str | None, error: str, retryable: bool) -> Task: ...
    def release(self, task_id: str, lease_token: str) -> Task: ...
    def retry(self, task_id: str) -> Task: ...
    def cancel(self, task_id: str) -> Task: ...
    def counts(self) -> dict[State, int]: ...
    def expire(self) -> int: ...
    def purge(self, older_than: float) -> int: ...
    def recent(self, limit: int) -> list[Task]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    lease_token TEXT,
    lease_expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    notes TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, created_at);
"""
_COLUMNS = (
    "id, state, pipeline, attempts, error, created_at, updated_at, finished_at,"
    " lease_token, lease_expires_at, notes"
)
# Columns added since the first schema: a file made before them gets them when opened.
_ADDED_COLUMNS = {"notes": "TEXT"}


@dataclasses.dataclass(frozen=True)
class LeasePolicy:
    """The store's rules; ``Config.settings_for(LeasePolicy)`` builds it, defaults are Config's."""

    lease_seconds: float = Config.lease_seconds
    max_attempts: int = Config.max_attempts
    upload_timeout_seconds: float = Config.upload_timeout_seconds


class SqliteTaskStore:
    """Tasks in one SQLite file (WAL); every change is committed before the method returns."""

    def __init__(
        self,
        path: Path,
        policy: LeasePolicy,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_task_id,
        new_token: Callable[[], str] = new_lease_token,
    ) -> None:
        make_private_directory(path.parent)
        create_private_file(path)  # SQLite gives its -wal and -shm files the same mode
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a reply means the change is on disk
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        # Reads on a connection of their own: in WAL mode they see the last commit and never
        # wait for a write transaction (its COMMIT is an fsync) to end.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()
        self._policy = policy
        self._clock = clock
        self._new_id = new_id
        self._new_token = new_token
        self._lock = threading.Lock()
        # Claimers long-poll on this; every change that may make a task claimable bumps it.
        self._queue_changed = threading.Condition()
        self._generation = 0
        # Long polls on one task's state: an event per waiting request, set when that task
        # changes (all of them for bulk changes), so a change wakes only its own watchers.
        self._watchers: dict[str, set[threading.Event]] = {}
        self._watchers_lock = threading.Lock()
        # Tasks changed by the transaction in progress: their watchers wake after its commit,
        # so a woken watcher's read (on the other connection) sees the change.
        self._changed: list[str] = []
        self.lease_expiries = 0
        self.finishes_refused = 0

    # -- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock; rolls back on any error.

        The watchers of the tasks it changed are woken once it is committed.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._changed.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            changed, self._changed = self._changed, []
        for task_id in changed:
            self._notify_watchers(task_id)

    def _row(self, task_id: str, db: sqlite3.Connection | None = None) -> Task:
        query = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
        row = (db or self._db).execute(query, (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return _task(row)

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")

    def _update(self, task_id: str, **fields: object) -> Task:
        if "state" in fields:
            self._changed.append(task_id)
        fields["updated_at"] = self._clock()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(
            f"UPDATE tasks SET {assignments} WHERE id = ?", (*fields.values(), task_id)
        )
        return self._row(task_id)

    def _notify_watchers(self, task_id: str | None = None) -> None:
        """Wake the watchers of ``task_id``, or of every task."""
        with self._watchers_lock:
            if task_id is None:
                events = [event for group in self._watchers.values() for event in group]
            else:
                events = list(self._watchers.get(task_id, ()))
        for event in events:
            event.set()

    def _notify_claimers(self) -> None:
        """One task became claimable: wake one waiting claimer, not all of them to race for it.

        The others see the new generation when they next wake (twice a second at least).
        """
        with self._queue_changed:
            self._generation += 1
            self._queue_changed.notify()

    # -- life cycle ---------------------------------------------------------------------
    def create(self, pipeline: str) -> Task:
        """A new task, uploading until ``enqueue``."""
        now = self._clock()
        task_id = self._new_id()
        with self._transaction():
            self._db.execute(
                "INSERT INTO tasks (id, state, pipeline, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (task_id, State.UPLOADING, pipeline, now, now),
            )
            return self._row(task_id)

    def enqueue(self, task_id: str) -> Task:
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.UPLOADING:
                task = self._update(task_id, state=State.QUEUED)
            elif task.state != State.QUEUED:
                raise TaskConflict(
                    f"task is {task.state.value}; only an uploading task is enqueued"
                )
        self._notify_claimers()
        return task

    def get(self, task_id: str) -> Task:
        """The task as clients must see it; a read only (no write transaction, no expiry written).

        A lease or upload that ran out shows as what its expiry will write (``_lapsed``); claims
        and the periodic sweep (``expire``) write it, and so does any change to the task.
        """
        with self._read_lock:
            task = self._row(task_id, self._reader)
        return _lapsed(task, self._clock(), self._policy)

    def watch(self, task_id: str, while_in: Collection[State], wait_seconds: float) -> Task:
        """The task as soon as its state is not one of ``while_in``, or as it is after the wait."""
        deadline = time.monotonic() + wait_seconds
        changed = threading.Event()
        with self._watchers_lock:
            self._watchers.setdefault(task_id, set()).add(changed)
        try:
            while True:
                changed.clear()  # before reading: a change from here on sets it again
                task = self.get(task_id)
                remaining = deadline - time.monotonic()
                if task.state not in while_in or remaining <= 0:
                    return task
                # Wake at least twice a second so expired leases are noticed.
                changed.wait(min(remaining, 0.5))
        finally:
            with self._watchers_lock:
                group = self._watchers[task_id]
                group.discard(changed)
                if not group:
                    del self._watchers[task_id]

    def claim(self, wait_seconds: float = 0.0) -> Task | None:
        """The oldest queued task, leased to the caller; waits up to ``wait_seconds`` for one."""
        deadline = time.monotonic() + wait_seconds
        while True:
            with self._queue_changed:
                generation = self._generation
            task = self._claim_once()
            remaining = deadline - time.monotonic()
            if task is not None or remaining <= 0:
                return task
            with self._queue_changed:
                if generation == self._generation:
                    # Wake at least twice a second so expired leases are noticed.
                    self._queue_changed.wait(min(remaining, 0.5))

    def _claim_once(self) -> Task | None:
        now = self._clock()
        with self._transaction():
            self._expire(now)
            row = self._db.execute(
                "SELECT id FROM tasks WHERE state = ? ORDER BY created_at, rowid LIMIT 1",
                (State.QUEUED,),
            ).fetchone()
            if row is None:
                return None
            task = self._row(row[0])
            return self._update(
                task.id,
                state=State.IN_PROGRESS,
                attempts=task.attempts + 1,
                lease_token=self._new_token(),
                lease_expires_at=now + self._policy.lease_seconds,
            )

    def heartbeat(self, task_id: str, lease_token: str) -> Task:
        with self._transaction():
            task = self._held(task_id, lease_token, State.IN_PROGRESS)
            return self._update(
                task.id, lease_expires_at=self._clock() + self._policy.lease_seconds
            )

    def finish(self, task_id: str, lease_token: str, notes: Sequence[str] = ()) -> Task:
        """Mark the task finished with its ``notes``, which its error field also holds, joined
        (what the task's status said before it had a list of notes; None when there are none)."""
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.FINISHED and task.lease_token == lease_token:
                return task  # the holder repeating itself
            # A holder whose lease just expired may still finish while nobody else holds it.
            try:
                self._held(task_id, lease_token, State.IN_PROGRESS, State.QUEUED)
            except TaskConflict:
                self.finishes_refused += 1  # finished already, or the lease went to another
                raise
            return self._update(
                task_id,
                state=State.FINISHED,
                finished_at=self._clock(),
                lease_expires_at=None,
                error="; ".join(notes)[:MAX_ERROR_LENGTH] or None,
                notes=json.dumps(list(notes)) if notes else None,
            )

    def fail(self, task_id: str, lease_token: str | None, error: str, retryable: bool) -> Task:
        with self._transaction():
            task = self._current(task_id)
            if lease_token is None:
                # Without a lease only an upload can be abandoned (by the master).
                if task.state != State.UPLOADING:
                    raise TaskConflict(f"task is {task.state.value}; failing it needs its lease")
                return self._update(
                    task_id, state=State.FAILED, error=error, finished_at=self._clock()
                )
            if task.state == State.FAILED and task.lease_token == lease_token:
                return task
            task = self._held(task_id, lease_token, State.IN_PROGRESS, State.QUEUED)
            if retryable and task.attempts < self._policy.max_attempts:
                task = self._update(task_id, state=State.QUEUED, error=error, lease_expires_at=None)
            else:
                task = self._update(
                    task_id,
                    state=State.FAILED,
                    error=error,
                    finished_at=self._clock(),
                    lease_expires_at=None,
                )
        self._notify_claimers()
        return task

    def release(self, task_id: str, lease_token: str) -> Task:
        """Give a task back untouched (a worker shutting down): the claim does not count."""
        with self._transaction():
            task = self._held(task_id, lease_token, State.IN_PROGRESS)
            task = self._update(
                task_id,
                state=State.QUEUED,
                attempts=max(task.attempts - 1, 0),
                lease_token=None,
                lease_expires_at=None,
            )
        self._notify_claimers()
        return task

    def retry(self, task_id: str) -> Task:
        """Queue a failed task again with fresh attempts (an operator's decision)."""
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.QUEUED:
                return task
            if task.state != State.FAILED:
                raise TaskConflict(f"task is {task.state.value}; only a failed task is retried")
            task = self._update(
                task_id,
                state=State.QUEUED,
                attempts=0,
                error=None,
                finished_at=None,
                lease_token=None,
            )
        self._notify_claimers()
        return task

    def cancel(self, task_id: str) -> Task:
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.FAILED:
                return task
            if task.state not in (State.QUEUED, State.UPLOADING):
                raise TaskConflict(f"task is {task.state.value}; only a waiting task is cancelled")
            return self._update(
                task_id, state=State.FAILED, error="cancelled", finished_at=self._clock()
            )

    def purge(self, older_than: float) -> int:
        """Delete finished and failed tasks that ended before ``older_than`` (epoch seconds)."""
        with self._transaction():
            return self._db.execute(
                "DELETE FROM tasks WHERE state IN (?, ?) AND finished_at < ?",
                (State.FINISHED, State.FAILED, older_than),
            ).rowcount

    def counts(self) -> dict[State, int]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT state, COUNT(*) FROM tasks GROUP BY state"
            ).fetchall()
        counts = dict.fromkeys(State, 0)
        counts.update({State.from_code(state): n for state, n in rows})
        return counts

    def recent(self, limit: int) -> list[Task]:
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {_COLUMNS} FROM tasks ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_task(row) for row in rows]

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # -- rules --------------------------------------------------------------------------
    def _held(self, task_id: str, lease_token: str, *states: State) -> Task:
        task = self._current(task_id)
        if task.lease_token != lease_token:
            raise TaskConflict("lease lost: the task is leased to another worker or not leased")
        if task.state not in states:
            raise TaskConflict(f"task is {task.state.value}")
        return task

    def expire(self) -> int:
        """Write the expiry of every lease and upload that ran out; how many tasks changed.

        The periodic sweep and the metrics scrape call it; a claim does the same first. Most
        calls find nothing, and then they write nothing: the look is a read.
        """
        now = self._clock()
        with self._read_lock:
            if not self._lapsed_rows(now, self._reader):
                return 0
        with self._transaction():
            return self._expire(now)

    def _expire(self, now: float) -> int:
        """Put tasks with expired leases back in the queue, or fail them when out of attempts;
        fail uploads that never completed. Inside a transaction."""
        lapsed = self._lapsed_rows(now)
        for task in lapsed:
            self._write_lapse(task, _lapsed(task, now, self._policy))
        return len(lapsed)

    def _lapsed_rows(self, now: float, db: sqlite3.Connection | None = None) -> list[Task]:
        rows = (
            (db or self._db)
            .execute(
                f"SELECT {_COLUMNS} FROM tasks"
                " WHERE (state = ? AND lease_expires_at < ?) OR (state = ? AND created_at < ?)",
                (
                    State.IN_PROGRESS,
                    now,
                    State.UPLOADING,
                    now - self._policy.upload_timeout_seconds,
                ),
            )
            .fetchall()
        )
        return [_task(row) for row in rows]

    def _current(self, task_id: str) -> Task:
        """The task's row with its lapse written first, if it has one. Inside a transaction."""
        task = self._row(task_id)
        lapsed = _lapsed(task, self._clock(), self._policy)
        return task if lapsed == task else self._write_lapse(task, lapsed)

    def _write_lapse(self, task: Task, lapsed: Task) -> Task:
        self._db.execute(
            "UPDATE tasks SET state = ?, error = ?, finished_at = ?, updated_at = ?,"
            " lease_expires_at = ? WHERE id = ?",
            (
                lapsed.state,
                lapsed.error,
                lapsed.finished_at,
                lapsed.updated_at,
                lapsed.lease_expires_at,
                task.id,
            ),
        )
        if task.state == State.IN_PROGRESS:
            self.lease_expiries += 1
        self._changed.append(task.id)
        return lapsed


def _lapsed(task: Task, now: float, policy: LeasePolicy) -> Task:
    """``task`` as its expiry leaves it, at ``now``: unchanged unless its lease or upload ran out.

    The one statement of the expiry rules: reads derive from it, writes persist it.
    """
    if task.state == State.IN_PROGRESS and _before(task.lease_expires_at, now):
        last_error = task.error if task.error is not None else "worker stopped responding"
        if task.attempts >= policy.max_attempts:
            return dataclasses.replace(
                task,
                state=State.FAILED,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                error=f"lease expired {task.attempts} times; last error: {last_error}",
            )
        return dataclasses.replace(
            task, state=State.QUEUED, updated_at=now, lease_expires_at=None, error=last_error
        )
    if task.state == State.UPLOADING and task.created_at < now - policy.upload_timeout_seconds:
        return dataclasses.replace(
            task,
            state=State.FAILED,
            finished_at=now,
            updated_at=now,
            error="upload never completed",
        )
    return task


def _before(moment: float | None, now: float) -> bool:
    return moment is not None and moment < now


def _task(row: tuple) -> Task:
    (task_id, state, pipeline, attempts, error, created, updated, finished) = row[:8]
    token, expires, notes = row[8:]
    return Task(
        id=task_id,
        state=State.from_code(state),
        pipeline=pipeline,
        attempts=attempts,
        error=error,
        created_at=created,
        updated_at=updated,
        finished_at=finished,
        lease_token=token,
        lease_expires_at=expires,
        notes=tuple(json.loads(notes)) if notes else (),
    )
