"""Tasks in one SQLite file: the SQLite task store, and the home of the stores' shared names.

The rules are ``SqlTaskStore``'s (sqlstore.py); ``SqliteTaskStore`` implements the primitives
they are written over on SQLite. ``Task``, ``Delivery``, ``TaskEvent``, the errors, the
``TaskStore`` interface and ``LeasePolicy`` are defined in sqlstore.py and imported from here.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from darkroom.contract.tasks import EndedTask
from darkroom.core.atomicfile import create_private_file, make_private_directory
from darkroom.core.ids import new_lease_token, new_task_id
from darkroom.database.sqlstore import (
    _COLUMNS,
    EVENTS_PER_READ,
    Delivery,
    LeasePolicy,
    SqlTaskStore,
    State,
    StoreUnavailable,
    Task,
    TaskCancelled,
    TaskConflict,
    TaskEvent,
    TaskNotFound,
    TaskStore,
    _lapsed,
    _task,
    ended_task,
)

__all__ = [
    "EVENTS_PER_READ",
    "Delivery",
    "LeasePolicy",
    "SqliteTaskStore",
    "State",
    "StoreUnavailable",
    "Task",
    "TaskCancelled",
    "TaskConflict",
    "TaskEvent",
    "TaskNotFound",
    "TaskStore",
    "ended_task",
]

# Task states are stored as their codes (the seed's numbers).
sqlite3.register_adapter(State, lambda state: state.code)

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
CREATE TABLE IF NOT EXISTS webhooks (
    task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sequence INTEGER NOT NULL DEFAULT 0,
    ended_at REAL,
    due_at REAL,
    lease_token TEXT,
    lease_expires_at REAL,
    last TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_by_due ON webhooks (state, due_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    body_sha256 TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_task ON idempotency_keys (task_id);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS events_go_with_their_task AFTER DELETE ON tasks
BEGIN
    DELETE FROM events WHERE task_id = OLD.id;
END;
"""
# Columns added since the first schema: a file made before them gets them when opened.
_ADDED_COLUMNS = {"notes": "TEXT", "idempotency_key": "TEXT", "stage": "TEXT"}


class SqliteTaskStore(SqlTaskStore):
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
        # FULL: a durable transaction's reply means its change is on disk (see _transaction)
        self._db.execute("PRAGMA synchronous=FULL")
        self._synced_commits = True  # whether PRAGMA synchronous is FULL now
        self._db.execute("PRAGMA foreign_keys=ON")  # purged tasks take their webhooks along
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        # Reads on a connection of their own: in WAL mode they see the last commit and never
        # wait for a write transaction (its COMMIT is an fsync) to end.
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()
        super().__init__(policy, clock, new_id, new_token)
        self._lock = threading.Lock()
        # Tasks changed by the transaction in progress: their watchers wake after its commit,
        # so a woken watcher's read (on the other connection) sees the change.
        self._changed: list[str] = []
        self._ended: list[EndedTask] = []  # tasks the transaction in progress ends

    # -- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock; rolls back on any error.

        The watchers of the tasks it changed are woken once it is committed. A ``durable`` one's
        COMMIT waits for the disk (an fsync of the log, ~2 ms, with the lock held): its reply
        promises the change (an upload queued, a job finished, failed or cancelled). A change
        whose loss in a power cut is as if it was never asked for (a task created uploading, a
        claim, a heartbeat, a release, a lapse written) is not waited for:
        the log is written in order, so the next durable commit makes it durable with its own,
        and a process that dies loses nothing either way (the OS has the log).
        """
        with self._lock:
            if durable != self._synced_commits:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._synced_commits = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._changed.clear()
                self._ended.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            changed, self._changed = self._changed, []
            ended, self._ended = self._ended, []
            # under the lock, so the feed has the ends in the order they were committed
            self.ended_feed.add(ended)
        for task_id in dict.fromkeys(changed):  # once each
            self._notify_watchers(task_id)

    # -- primitives the shared rules are written over ----------------------------------
    # BEGIN IMMEDIATE holds the whole database: a read of rows to write needs no lock of its own.
    _FOR_UPDATE = ""
    _SKIP_LOCKED = ""

    def _execute(self, query: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """One statement of the transaction in progress."""
        return self._db.execute(query, params)

    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple]:
        """One read outside any transaction: it sees the last commit."""
        with self._read_lock:
            return self._reader.execute(query, params).fetchall()

    def _mark_changed(self, task_id: str) -> None:
        """The transaction in progress changes ``task_id``: wake its watchers after it."""
        self._changed.append(task_id)

    def _mark_ended(self, task: Task) -> None:
        """The transaction in progress ends ``task``: the feed has it once it is committed."""
        self._ended.append(ended_task(task.id, task.state, task.lease_token))

    def _count_expiry(self) -> None:
        self.lease_expiries += 1

    def _seen(self, task: Task) -> Task:
        """``task`` as the transaction in progress read or wrote it."""
        return task

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

    def _notify_claimers(self) -> None:
        """This process's claimers are all the file has: wake one (``_wake_claimer``)."""
        self._wake_claimer()

    # -- reads --------------------------------------------------------------------------
    def get(self, task_id: str) -> Task:
        """The task as clients must see it (``SqlTaskStore.get``), read on the reader connection."""
        with self._read_lock:
            task = self._row(task_id, self._reader)
        return _lapsed(task, self._clock(), self._policy)

    def _claim_once(self) -> Task | None:
        now = self._clock()
        with self._transaction(durable=False):  # a lost claim: the task is queued again
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

    # -- expiry -------------------------------------------------------------------------
    def expire(self) -> int:
        """``SqlTaskStore.expire``: the look is on the reader connection, outside the write lock."""
        now = self._clock()
        with self._read_lock:
            if not self._lapsed_rows(now, self._reader):
                return 0
        with self._transaction(durable=False):  # a lapse lost is found and written again
            return self._expire(now)

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
