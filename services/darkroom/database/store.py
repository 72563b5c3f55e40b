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

from darkroom.core.atomicfile import create_private_file, make_private_directory
from darkroom.core.ids import new_lease_token, new_task_id
from darkroom.database.feed import FEED_CAPACITY
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
from darkroom.database.wakeups import Wakeup, Wakeups

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
-- The ends in commit order, for the feed of every process that shares the file (the newest
-- ENDED_LOG_ROWS are kept; AUTOINCREMENT: numbers are never reused, even once pruned).
CREATE TABLE IF NOT EXISTS ended_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    lease_token TEXT
);
"""
# Columns added since the first schema: a file made before them gets them when opened.
_ADDED_COLUMNS = {"notes": "TEXT", "idempotency_key": "TEXT", "stage": "TEXT"}
# Ends kept in ``ended_log``: as many as a feed remembers, for a process that fell behind.
ENDED_LOG_ROWS = FEED_CAPACITY


class SqliteTaskStore(SqlTaskStore):
    """Tasks in one SQLite file (WAL); every change is committed before the method returns.

    Several processes on one machine may open the same file (the master's and the workers'
    own calls, beside the database role's): SQLite's locks keep their transactions apart, and
    after each commit the others are woken (``darkroom.database.wakeups``). Each process's feed
    of ended tasks is read from the file's ``ended_log``, so it has every process's ends.
    """

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
        with self._immediate():  # two processes opening an old file at once add them once
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
        self._ends = False  # whether the transaction in progress ends a task
        self._queues = False  # ... or makes one claimable
        # The feed follows ended_log from its newest row: the ends from here on.
        self._feed_lock = threading.Lock()
        self._feed_seq = self._newest_end()
        self._pruned_to = 0
        self._wakeups = Wakeups(path.with_name(path.name + ".wakeups"), self._woken)

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
            try:
                with self._immediate():
                    yield
            except BaseException:
                self._changed.clear()
                self._ends = self._queues = False
                raise
            changed, self._changed = list(dict.fromkeys(self._changed)), []  # once each
            ends, queues = self._ends, self._queues
            self._ends = self._queues = False
        if ends:
            self._follow_ends()
        for task_id in changed:
            self._notify_watchers(task_id)
        # One datagram a commit to each other process; its claimers are woken by it, this
        # process's by _notify_claimers (after the commit, as the rules call it).
        self._wakeups.publish(changed, claimable=queues, ended=ends)

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # -- what the other processes on the file changed -----------------------------------
    def _woken(self, wakeup: Wakeup | None) -> None:
        """A commit in another process (None: a tick, to find what a lost datagram said)."""
        if wakeup is None or wakeup.ended:
            self._follow_ends()
        if wakeup is None:
            return
        if wakeup.tasks is None:
            self._notify_watchers()
        else:
            for task_id in wakeup.tasks:
                self._notify_watchers(task_id)
        if wakeup.claimable:
            self._wake_claimer()

    def _newest_end(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT COALESCE(MAX(seq), 0) FROM ended_log").fetchone()[0]

    def _follow_ends(self) -> None:
        """Add the ends committed since the last look, by any process, to the feed in order;
        a new epoch if some were pruned before this process read them."""
        with self._feed_lock:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT seq, task_id, state, lease_token FROM ended_log WHERE seq > ?"
                    " ORDER BY seq",
                    (self._feed_seq,),
                ).fetchall()
            if not rows:
                return
            if rows[0][0] != self._feed_seq + 1:
                self.ended_feed.reset()
            self.ended_feed.add(
                ended_task(task_id, State.from_code(code), token)
                for _, task_id, code, token in rows
            )
            self._feed_seq = rows[-1][0]

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
        """The transaction in progress ends ``task``: every feed has it once it is committed."""
        self._db.execute(
            "INSERT INTO ended_log (task_id, state, lease_token) VALUES (?, ?, ?)",
            (task.id, task.state, task.lease_token),
        )
        self._ends = True

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

    def _record_state(self, task: Task) -> None:
        """``SqlTaskStore._record_state``; a task queued is a claim for the other processes'
        claimers, told with the commit's wake-up."""
        if task.state == State.QUEUED:
            self._queues = True
        super()._record_state(task)

    def _notify_claimers(self) -> None:
        """This process's claimers: wake one (the others' were woken with the commit)."""
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
        self._wakeups.close()
        with self._lock, self._feed_lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # -- expiry -------------------------------------------------------------------------
    def expire(self) -> int:
        """``SqlTaskStore.expire``: the look is on the reader connection, outside the write lock."""
        now = self._clock()
        self._prune_ended_log()
        with self._read_lock:
            if not self._lapsed_rows(now, self._reader):
                return 0
        with self._transaction(durable=False):  # a lapse lost is found and written again
            return self._expire(now)

    def _prune_ended_log(self) -> None:
        """Keep the newest ENDED_LOG_ROWS ends (a tenth more at most: pruned in batches)."""
        keep_above = self._feed_seq - ENDED_LOG_ROWS
        if keep_above - self._pruned_to < ENDED_LOG_ROWS // 10:
            return
        with self._transaction(durable=False):
            self._db.execute("DELETE FROM ended_log WHERE seq <= ?", (keep_above,))
        self._pruned_to = keep_above

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
