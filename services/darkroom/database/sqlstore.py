"""Task records and their life cycle, written once in SQL for both task stores.

A claim gives a task a lease (token and expiry). Only the lease holder may extend, finish or
fail it. An expired lease puts the task back in the queue; after ``max_attempts`` claims the
task fails, keeping the last error. A finished task never changes again. A client may cancel a
task that has not ended: its lease is dropped, and its holder's next call is refused
(``TaskCancelled``).

An upload's idempotency key is kept in a table of its own, with the task it created and the
SHA-256 of its body, for ``idempotency_seconds``: ``create`` with a kept key raises
``IdempotencyKeyUsed`` naming that task instead of creating another.

``SqlTaskStore`` states these rules, the events, webhook deliveries and long polls, in portable
SQL over a few primitives; ``SqliteTaskStore`` (store.py) and ``PostgresTaskStore``
(pgstore.py) implement them: transactions, statements, the reads of rows, the wake-ups of
watchers and claimers, the connections. The records and errors of this module are imported
from ``darkroom.database.store``, which re-exports them.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, ClassVar, Protocol

from darkroom.contract.events import EventKind, Stage
from darkroom.contract.folders import result_version
from darkroom.contract.limits import MAX_ERROR_LENGTH
from darkroom.contract.tasks import (
    ENDED_STATES,
    EndedTask,
    EndedTasks,
    IdempotencyKeyUsed,
    KeyHolder,
    TaskState,
)
from darkroom.contract.webhooks import KEPT_ATTEMPTS, Attempt, DeliveryState
from darkroom.core.config import Config
from darkroom.database.feed import EndedFeed

# The stores' name for the contract's task states; stored as their codes (the seed's numbers).
State = TaskState


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
    # the Idempotency-Key its upload came with (None without one)
    idempotency_key: str | None = None
    # the name of its last processing stage (its last stage event), None before the first
    stage: str | None = None


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A job's webhook delivery. ``due_at`` is None until the job ends, and once it is settled.

    A master claims a due delivery under a lease (token and expiry), as a worker claims a task:
    a master that dies mid-attempt leaves it to be claimed again once the lease runs out.
    """

    task_id: str
    url: str
    state: DeliveryState
    attempts: int  # of the current message
    sequence: int  # how many times the job ended (see contract.webhooks.message_id)
    ended_at: float | None  # when the job last ended: the retry period counts from it
    due_at: float | None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    last: tuple[Attempt, ...] = ()


@dataclasses.dataclass(frozen=True)
class TaskEvent:
    """One state change or processing stage of a task; ``sequence`` counts from 1 per task."""

    task_id: str
    sequence: int
    at: float
    kind: EventKind
    data: dict[str, Any]


class TaskNotFound(LookupError):
    pass


class TaskConflict(Exception):
    """The request does not fit the task's state or lease; the message says how."""


class TaskCancelled(TaskConflict):
    """A call about a task its client cancelled: the worker holding it stops."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled by its client")


class StoreUnavailable(Exception):
    """The database behind the store cannot be reached now (a PostgreSQL restart): retry."""


class TaskStore(Protocol):
    # Leases that expired since the store opened (a requeue or a final failure each).
    lease_expiries: int
    # Finishes refused since the store opened: the work of a lost lease, done twice.
    finishes_refused: int

    def create(
        self,
        pipeline: str,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task: ...
    def enqueue(self, task_id: str, *, body_sha256: str | None = None) -> Task: ...
    def get(self, task_id: str) -> Task: ...
    def watch(self, task_id: str, while_in: Collection[State], wait_seconds: float) -> Task: ...
    def claim(
        self, wait_seconds: float = 0.0, departed: Callable[[], bool] = ...
    ) -> Task | None: ...
    def heartbeat(
        self, task_id: str, lease_token: str, *, stages: Sequence[Stage] = ()
    ) -> Task: ...
    def finish(
        self,
        task_id: str,
        lease_token: str,
        notes: Sequence[str] = (),
        *,
        stages: Sequence[Stage] = (),
    ) -> Task: ...
    def fail(
        self,
        task_id: str,
        lease_token: str | None,
        error: str,
        retryable: bool,
        *,
        stages: Sequence[Stage] = (),
    ) -> Task: ...
    def release(self, task_id: str, lease_token: str) -> Task: ...
    def retry(self, task_id: str) -> Task: ...
    def cancel(self, task_id: str) -> Task: ...
    def counts(self) -> dict[State, int]: ...
    def expire(self) -> int: ...
    def purge(self, older_than: float) -> int: ...
    def recent(self, limit: int) -> list[Task]: ...

    ended_feed: EndedFeed  # what ``ended`` reads; closed when the process stops

    def ended(self, epoch: str | None, after: int, wait_seconds: float = 0.0) -> EndedTasks: ...
    def events(
        self, task_id: str, after: int = 0, wait_seconds: float = 0.0
    ) -> list[TaskEvent]: ...
    # webhook deliveries
    def delivery(self, task_id: str) -> Delivery | None: ...
    def claim_delivery(self, lease_seconds: float) -> Delivery | None: ...
    def report_delivery(
        self, task_id: str, lease_token: str, attempt: Attempt, retry_in: float | None
    ) -> Delivery: ...


_COLUMNS = (
    "id, state, pipeline, attempts, error, created_at, updated_at, finished_at,"
    " lease_token, lease_expires_at, notes, idempotency_key, stage"
)
# At most this many events per read: a reader asks again from the last one it got.
EVENTS_PER_READ = 500
_DELIVERY_COLUMNS = (
    "task_id, url, state, attempts, sequence, ended_at, due_at, lease_token, lease_expires_at, last"
)


@dataclasses.dataclass(frozen=True)
class LeasePolicy:
    """The store's rules; ``Config.settings_for(LeasePolicy)`` builds it, defaults are Config's."""

    lease_seconds: float = Config.lease_seconds
    max_attempts: int = Config.max_attempts
    upload_timeout_seconds: float = Config.upload_timeout_seconds
    idempotency_seconds: float = Config.idempotency_seconds


class _Cursor(Protocol):
    """What the rules use of a statement's cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class SqlTaskStore(abc.ABC):
    """The task store's rules in portable SQL; a subclass implements the abstract primitives
    on its database, and every change is committed before the method returns."""

    def __init__(
        self,
        policy: LeasePolicy,
        clock: Callable[[], float],
        new_id: Callable[[], str],
        new_token: Callable[[], str],
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._new_id = new_id
        self._new_token = new_token
        # Claimers long-poll on this; every change that may make a task claimable bumps it.
        self._queue_changed = threading.Condition()
        self._generation = 0
        # Long polls on one task's state: an event per waiting request, set when that task
        # changes (all of them for bulk changes), so a change wakes only its own watchers.
        self._watchers: dict[str, set[threading.Event]] = {}
        self._watchers_lock = threading.Lock()
        self.ended_feed = EndedFeed()
        self.lease_expiries = 0
        self.finishes_refused = 0

    # -- primitives: the rules below are written over these, which each store implements its
    # own way. Shared SQL is portable, with ``?`` placeholders.
    @abc.abstractmethod
    def _transaction(self, durable: bool = True) -> contextlib.AbstractContextManager[None]:
        """The transaction the primitives below run in, committed when the block ends and
        rolled back on any error. ``durable``: whether its reply promises the change (an
        upload queued, a job finished, failed or cancelled) rather than one whose loss in a
        power cut is as if it was never asked for (a claim, a heartbeat, a lapse written)."""

    # Added to a read inside a transaction of the rows it will write. SQLite needs nothing:
    # BEGIN IMMEDIATE holds the whole database; PostgreSQL locks the rows.
    _FOR_UPDATE: ClassVar[str]
    _SKIP_LOCKED: ClassVar[str]

    @abc.abstractmethod
    def _execute(self, query: str, params: Sequence[object] = ()) -> _Cursor:
        """One statement of the transaction in progress."""

    @abc.abstractmethod
    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple]:
        """One read outside any transaction: it sees the last commit."""

    @abc.abstractmethod
    def _mark_changed(self, task_id: str) -> None:
        """The transaction in progress changes ``task_id``: wake its watchers after it."""

    @abc.abstractmethod
    def _mark_ended(self, task: Task) -> None:
        """The transaction in progress ends ``task``: the feed has it once it is committed."""

    @abc.abstractmethod
    def _count_expiry(self) -> None:
        """The transaction in progress expires a lease: count it in ``lease_expiries``."""

    @abc.abstractmethod
    def _seen(self, task: Task) -> Task:
        """``task`` as the transaction in progress read or wrote it."""

    @abc.abstractmethod
    def _row(self, task_id: str) -> Task:
        """The task's row in the transaction in progress; TaskNotFound if there is none."""

    def _update(self, task_id: str, **fields: object) -> Task:
        """Change the task's ``fields``; a change of state makes its event and, when the task
        ends, its webhook delivery due, in the same transaction."""
        state = fields.get("state")
        if state is not None:
            self._mark_changed(task_id)
            self._make_delivery_due_if_ended(task_id, State(state))
        task = self._write_row(task_id, {**fields, "updated_at": self._clock()})
        if state is not None:
            self._record_state(task)
        return task

    def _record_state(self, task: Task) -> None:
        """After a change of ``task``'s state: its event, and the feed's entry if it ended."""
        self._append_state_event(task.id, task.state)
        if task.state.ended:
            self._mark_ended(task)

    def _write_row(self, task_id: str, fields: dict[str, object]) -> Task:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        row = self._execute(
            f"UPDATE tasks SET {assignments} WHERE id = ? RETURNING {_COLUMNS}",
            (*fields.values(), task_id),
        ).fetchone()
        return self._seen(_task(row))

    def _notify_watchers(self, task_id: str | None = None) -> None:
        """Wake the watchers of ``task_id``, or of every task."""
        with self._watchers_lock:
            if task_id is None:
                events = [event for group in self._watchers.values() for event in group]
            else:
                events = list(self._watchers.get(task_id, ()))
        for event in events:
            event.set()

    def _wake_claimer(self) -> None:
        """One task became claimable: wake one waiting claimer, not all of them to race for it.

        The others see the new generation when they next wake (twice a second at least).
        """
        with self._queue_changed:
            self._generation += 1
            self._queue_changed.notify()

    @abc.abstractmethod
    def _notify_claimers(self) -> None:
        """After a commit that made a task claimable: its claimers are told (``_wake_claimer``)."""

    # -- life cycle ---------------------------------------------------------------------
    def create(
        self,
        pipeline: str,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """A new task, uploading until ``enqueue``; with ``webhook_url``, its delivery armed.

        With ``idempotency_key``: IdempotencyKeyUsed when the key is kept for another task.
        """
        now = self._clock()
        task_id = self._new_id()
        with self._transaction(durable=False):  # durable with the enqueue that acknowledges it
            if idempotency_key is not None:
                self._claim_key(idempotency_key, task_id, now)
            row = self._execute(
                "INSERT INTO tasks (id, state, pipeline, created_at, updated_at, idempotency_key)"
                f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
                (task_id, State.UPLOADING, pipeline, now, now, idempotency_key),
            ).fetchone()
            if webhook_url is not None:
                self._execute(
                    "INSERT INTO webhooks (task_id, url, state) VALUES (?, ?, ?)",
                    (task_id, webhook_url, DeliveryState.PENDING),
                )
            self._append_state_event(task_id, State.UPLOADING)
            return _task(row)

    def enqueue(self, task_id: str, *, body_sha256: str | None = None) -> Task:
        """Queue an uploaded task; ``body_sha256`` fixes its idempotency key's fingerprint."""
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.UPLOADING:
                task = self._update(task_id, state=State.QUEUED)
            elif task.state == State.CANCELLED:
                raise TaskCancelled(task_id)
            elif task.state != State.QUEUED:
                raise TaskConflict(
                    f"task is {task.state.value}; only an uploading task is enqueued"
                )
            if body_sha256 is not None:
                self._execute(
                    "UPDATE idempotency_keys SET body_sha256 = ? WHERE task_id = ?",
                    (body_sha256, task_id),
                )
        self._notify_claimers()
        return task

    @abc.abstractmethod
    def get(self, task_id: str) -> Task:
        """The task as clients must see it; a read only (no write transaction, no expiry written).

        A lease or upload that ran out shows as what its expiry will write (``_lapsed``); claims
        and the periodic sweep (``expire``) write it, and so does any change to the task.
        """

    def watch(self, task_id: str, while_in: Collection[State], wait_seconds: float) -> Task:
        """The task as soon as its state is not one of ``while_in``, or as it is after the wait."""
        deadline = time.monotonic() + wait_seconds
        with self._watching(task_id) as changed:
            while True:
                changed.clear()  # before reading: a change from here on sets it again
                task = self.get(task_id)
                remaining = deadline - time.monotonic()
                if task.state not in while_in or remaining <= 0:
                    return task
                # Wake at least twice a second so expired leases are noticed.
                changed.wait(min(remaining, 0.5))

    @contextlib.contextmanager
    def _watching(self, task_id: str) -> Iterator[threading.Event]:
        """An event set whenever ``task_id`` changes (its state, or a new event of it)."""
        changed = threading.Event()
        with self._watchers_lock:
            self._watchers.setdefault(task_id, set()).add(changed)
        try:
            yield changed
        finally:
            with self._watchers_lock:
                group = self._watchers[task_id]
                group.discard(changed)
                if not group:
                    del self._watchers[task_id]

    # -- the feed of ended tasks --------------------------------------------------------
    def ended(self, epoch: str | None, after: int, wait_seconds: float = 0.0) -> EndedTasks:
        """The tasks that ended after position ``after`` of ``epoch`` (``EndedFeed.after``)."""
        return self.ended_feed.after(epoch, after, wait_seconds)

    # -- events -------------------------------------------------------------------------
    def events(self, task_id: str, after: int = 0, wait_seconds: float = 0.0) -> list[TaskEvent]:
        """The task's events numbered above ``after``, oldest first (at most EVENTS_PER_READ);
        with ``wait_seconds``, waits up to that long for one when there are none yet."""
        deadline = time.monotonic() + wait_seconds
        with self._watching(task_id) as changed:
            while True:
                changed.clear()  # before reading: an event from here on sets it again
                found = self._events_after(task_id, after)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                # Twice a second at least: another process's wake-up may have been missed.
                changed.wait(min(remaining, 0.5))

    def _events_after(self, task_id: str, after: int) -> list[TaskEvent]:
        rows = self._read(
            "SELECT seq, at, kind, data FROM events WHERE task_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (task_id, after, EVENTS_PER_READ),
        )
        if not rows and not self._read("SELECT 1 FROM tasks WHERE id = ?", (task_id,)):
            raise TaskNotFound(task_id)
        return [
            TaskEvent(task_id, seq, at, EventKind(kind), json.loads(data))
            for seq, at, kind, data in rows
        ]

    def _append_state_event(self, task_id: str, state: State) -> None:
        self._append_events(task_id, EventKind.STATE, [_state_event(state)])

    def _append_stage_events(self, task_id: str, stages: Sequence[Stage]) -> None:
        """The stages as events, the last one's name as the task's stage reached."""
        if stages:
            self._append_events(task_id, EventKind.STAGE, [stage.document() for stage in stages])
            self._execute("UPDATE tasks SET stage = ? WHERE id = ?", (stages[-1].name, task_id))

    def _append_events(self, task_id: str, kind: EventKind, data: Sequence[dict]) -> None:
        """Number and write events of ``task_id``; inside the transaction that makes them.

        Each is numbered after the task's last: no two writers race for a number, since every
        change that writes an event holds the task's row (SQLite's whole database; on
        PostgreSQL the row lock its rule took first, or the task is new in this transaction).
        """
        now = self._clock()
        for item in data:
            self._execute(
                "INSERT INTO events (task_id, seq, at, kind, data)"
                " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM events WHERE task_id = ?",
                (task_id, now, kind.value, _event_data(item), task_id),
            )
        if data:
            self._mark_changed(task_id)  # its watchers wake once the transaction is committed

    def claim(
        self, wait_seconds: float = 0.0, departed: Callable[[], bool] = lambda: False
    ) -> Task | None:
        """The oldest queued task, leased to the caller; waits up to ``wait_seconds`` for one.

        None once ``departed`` says the caller has gone (a stopping worker closes its claim):
        a task leased now would wait for its lease to run out, held by no one."""
        deadline = time.monotonic() + wait_seconds
        while True:
            with self._queue_changed:
                generation = self._generation
            if departed():
                return None
            task = self._claim_once()
            remaining = deadline - time.monotonic()
            if task is not None or remaining <= 0:
                return task
            with self._queue_changed:
                if generation == self._generation:
                    # Wake at least twice a second so expired leases are noticed.
                    self._queue_changed.wait(min(remaining, 0.5))

    @abc.abstractmethod
    def _claim_once(self) -> Task | None:
        """The oldest queued task leased to the caller now, lapses written first; None if none."""

    def heartbeat(self, task_id: str, lease_token: str, *, stages: Sequence[Stage] = ()) -> Task:
        """Extend the lease; ``stages``: the holder's processing stages done since its last call."""
        with self._transaction(durable=False):
            task = self._held(task_id, lease_token, State.IN_PROGRESS)
            self._append_stage_events(task_id, stages)
            return self._update(
                task.id, lease_expires_at=self._clock() + self._policy.lease_seconds
            )

    def finish(
        self,
        task_id: str,
        lease_token: str,
        notes: Sequence[str] = (),
        *,
        stages: Sequence[Stage] = (),
    ) -> Task:
        """Mark the task finished with its ``notes``, which its error field also holds, joined
        (what the task's status said before it had a list of notes; None when there are none).
        Its last ``stages`` are written first, before the finished state's event."""
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.FINISHED and task.lease_token == lease_token:
                return task  # the holder repeating itself
            # A holder whose lease just expired may still finish while nobody else holds it.
            try:
                self._held(task_id, lease_token, State.IN_PROGRESS, State.QUEUED)
            except TaskCancelled:
                raise  # no work done twice: the client did not want it
            except TaskConflict:
                self.finishes_refused += 1  # finished already, or the lease went to another
                raise
            self._append_stage_events(task_id, stages)
            return self._update(
                task_id,
                state=State.FINISHED,
                finished_at=self._clock(),
                lease_expires_at=None,
                error="; ".join(notes)[:MAX_ERROR_LENGTH] or None,
                notes=json.dumps(list(notes)) if notes else None,
            )

    def fail(
        self,
        task_id: str,
        lease_token: str | None,
        error: str,
        retryable: bool,
        *,
        stages: Sequence[Stage] = (),
    ) -> Task:
        """Fail (or, ``retryable`` with attempts left, queue again) a task; the holder's last
        ``stages`` are written first."""
        with self._transaction():
            task = self._current(task_id)
            if lease_token is None:
                # Without a lease only a waiting task is failed: an upload the master abandons,
                # or a task an operator gives up on (/setById with state 3).
                if task.state not in (State.UPLOADING, State.QUEUED):
                    raise TaskConflict(f"task is {task.state.value}; failing it needs its lease")
                return self._update(
                    task_id, state=State.FAILED, error=error, finished_at=self._clock()
                )
            if task.state == State.FAILED and task.lease_token == lease_token:
                return task
            task = self._held(task_id, lease_token, State.IN_PROGRESS, State.QUEUED)
            self._append_stage_events(task_id, stages)
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
        with self._transaction(durable=False):
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

    def purge(self, older_than: float) -> int:
        """Delete ended tasks that ended before ``older_than`` (epoch seconds); forget the
        idempotency keys older than ``idempotency_seconds`` or whose task is gone."""
        ended = tuple(ENDED_STATES)
        with self._transaction():
            purged = self._execute(
                f"DELETE FROM tasks WHERE state IN ({', '.join('?' * len(ended))})"
                " AND finished_at < ?",
                (*ended, older_than),
            ).rowcount
            self._execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?"
                " OR NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = idempotency_keys.task_id)",
                (self._clock() - self._policy.idempotency_seconds,),
            )
            return purged

    # -- cancel -------------------------------------------------------------------------
    def cancel(self, task_id: str) -> Task:
        """Cancel a task that has not ended (its lease dropped); a cancelled one is returned
        as it is; TaskConflict for a finished or failed one."""
        with self._transaction():
            task = self._current(task_id)
            if task.state == State.CANCELLED:
                return task
            if task.state.ended:
                raise TaskConflict(
                    f"the job is {task.state.value}; only a job that has not ended is cancelled"
                )
            return self._update(
                task_id,
                state=State.CANCELLED,
                finished_at=self._clock(),
                lease_token=None,
                lease_expires_at=None,
            )

    # -- idempotency keys ---------------------------------------------------------------
    def _claim_key(self, key: str, task_id: str, now: float) -> None:
        """Tie ``key`` to the new task ``task_id``, or raise IdempotencyKeyUsed when it is kept
        for another. Inside a transaction.

        The insert comes first: of two stores claiming a new key at once (PostgreSQL), the
        second waits on the key's unique index until the first commits, then finds its row.
        """
        inserted = self._execute(
            "INSERT INTO idempotency_keys (key, task_id, body_sha256, created_at)"
            " VALUES (?, ?, NULL, ?) ON CONFLICT (key) DO NOTHING",
            (key, task_id, now),
        ).rowcount
        if inserted:
            return
        holder = self._key_holder(key, now)
        if holder is not None:
            raise IdempotencyKeyUsed(holder)
        self._execute(
            "UPDATE idempotency_keys SET task_id = ?, body_sha256 = NULL, created_at = ?"
            " WHERE key = ?",
            (task_id, now, key),
        )

    def _key_holder(self, key: str, now: float) -> KeyHolder | None:
        """The task ``key`` is kept for, or None when it is free: never used, older than
        ``idempotency_seconds``, its task purged, or its first upload never completed
        (abandoned, timed out or cancelled before its body was stored). The key's row is
        locked until the transaction ends; its task's is only read (``enqueue`` locks the
        task, then the key: taking both here in the other order could deadlock)."""
        row = self._execute(
            "SELECT task_id, body_sha256, created_at FROM idempotency_keys WHERE key = ?"
            + self._FOR_UPDATE,
            (key,),
        ).fetchone()
        if row is None or row[2] < now - self._policy.idempotency_seconds:
            return None
        task_id, body_sha256, _ = row
        found = self._execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if found is None:
            return None
        task = _lapsed(_task(found), now, self._policy)
        if body_sha256 is None and task.state != State.UPLOADING:
            return None
        return KeyHolder(task.id, task.pipeline, task.state, body_sha256)

    def counts(self) -> dict[State, int]:
        """How many tasks are in each state (every state, 0 for none)."""
        rows = self._read("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = dict.fromkeys(State, 0)
        counts.update({State.from_code(state): n for state, n in rows})
        return counts

    @abc.abstractmethod
    def recent(self, limit: int) -> list[Task]:
        """The ``limit`` tasks created last, newest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store's connections."""

    # -- rules --------------------------------------------------------------------------
    def _held(self, task_id: str, lease_token: str, *states: State) -> Task:
        task = self._current(task_id)
        if task.state == State.CANCELLED:
            raise TaskCancelled(task_id)
        if task.lease_token != lease_token:
            raise TaskConflict("lease lost: the task is leased to another worker or not leased")
        if task.state not in states:
            raise TaskConflict(f"task is {task.state.value}")
        return task

    @abc.abstractmethod
    def expire(self) -> int:
        """Write the expiry of every lease and upload that ran out; how many tasks changed.

        The periodic sweep and the metrics scrape call it; a claim does the same first. Most
        calls find nothing, and then they write nothing: the look is a read.
        """

    def _expire(self, now: float) -> int:
        """Put tasks with expired leases back in the queue, or fail them when out of attempts;
        fail uploads that never completed. Inside a transaction."""
        lapsed = self._lapsed_rows(now)
        for task in lapsed:
            self._write_lapse(task, _lapsed(task, now, self._policy))
        return len(lapsed)

    @abc.abstractmethod
    def _lapsed_rows(self, now: float) -> list[Task]:
        """The tasks whose lease or upload ran out by ``now``, in the transaction in progress."""

    def _current(self, task_id: str) -> Task:
        """The task's row with its lapse written first, if it has one. Inside a transaction."""
        task = self._row(task_id)
        lapsed = _lapsed(task, self._clock(), self._policy)
        return task if lapsed == task else self._write_lapse(task, lapsed)

    def _write_lapse(self, task: Task, lapsed: Task) -> Task:
        """Write what ``_lapsed`` made of ``task`` (its state changed), with its event and
        delivery as ``_update`` writes them."""
        self._mark_changed(task.id)
        self._make_delivery_due_if_ended(task.id, lapsed.state)
        written = self._write_row(
            task.id,
            {
                "state": lapsed.state,
                "error": lapsed.error,
                "finished_at": lapsed.finished_at,
                "updated_at": lapsed.updated_at,
                "lease_expires_at": lapsed.lease_expires_at,
            },
        )
        if task.state == State.IN_PROGRESS:
            self._count_expiry()
        self._record_state(written)
        return written

    # -- webhook deliveries -------------------------------------------------------------
    def _make_delivery_due_if_ended(self, task_id: str, state: State) -> None:
        """The job's delivery, if it has one, due now that it ends: in the transaction that
        ends it, so no ending is without its delivery. One already due stays as it is; one
        settled before (a failed job an operator retried) becomes a new message."""
        if not state.ended:
            return
        now = self._clock()
        self._execute(
            "UPDATE webhooks SET state = ?, due_at = ?, ended_at = ?, sequence = sequence + 1,"
            " attempts = 0, lease_token = NULL, lease_expires_at = NULL"
            " WHERE task_id = ? AND NOT (state = ? AND due_at IS NOT NULL)",
            (DeliveryState.PENDING, now, now, task_id, DeliveryState.PENDING),
        )

    def delivery(self, task_id: str) -> Delivery | None:
        """The job's webhook delivery; None when it asked for none (or is unknown)."""
        rows = self._read(f"SELECT {_DELIVERY_COLUMNS} FROM webhooks WHERE task_id = ?", (task_id,))
        return _delivery(rows[0]) if rows else None

    def _locked_delivery(self, task_id: str) -> Delivery | None:
        """The job's delivery, its row locked until the transaction ends."""
        row = self._execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhooks WHERE task_id = ?" + self._FOR_UPDATE,
            (task_id,),
        ).fetchone()
        return None if row is None else _delivery(row)

    _DUE_DELIVERY = (
        "SELECT task_id FROM webhooks WHERE state = ? AND due_at <= ?"
        " AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY due_at LIMIT 1"
    )

    def claim_delivery(self, lease_seconds: float) -> Delivery | None:
        """The delivery due longest, leased to the caller for ``lease_seconds``; None if none.

        Masters ask every second or so: when nothing is due, that is a read, no write.
        """
        now = self._clock()
        due = (DeliveryState.PENDING, now, now)
        if not self._read(self._DUE_DELIVERY, due):
            return None
        with self._transaction():
            # Of masters claiming at once (PostgreSQL), each skips the rows another is taking.
            row = self._execute(self._DUE_DELIVERY + self._SKIP_LOCKED, due).fetchone()
            if row is None:
                return None  # another master took it in between
            claimed = self._execute(
                "UPDATE webhooks SET lease_token = ?, lease_expires_at = ? WHERE task_id = ?"
                f" RETURNING {_DELIVERY_COLUMNS}",
                (self._new_token(), now + lease_seconds, row[0]),
            ).fetchone()
            return _delivery(claimed)

    def report_delivery(
        self, task_id: str, lease_token: str, attempt: Attempt, retry_in: float | None
    ) -> Delivery:
        """Record an attempt: delivered on a 2xx, else due again in ``retry_in`` seconds, or
        failed for good when that is None (a 410, or the retry period is over)."""
        with self._transaction():
            delivery = self._locked_delivery(task_id)
            if delivery is None:
                raise TaskNotFound(task_id)
            if delivery.lease_token != lease_token or delivery.state != DeliveryState.PENDING:
                raise TaskConflict("delivery lease lost: another master holds it, or it is done")
            if attempt.delivered:
                state, due_at = DeliveryState.DELIVERED, None
            elif retry_in is None:
                state, due_at = DeliveryState.FAILED, None
            else:
                state, due_at = DeliveryState.PENDING, self._clock() + retry_in
            last = [a.to_json() for a in (*delivery.last, attempt)[-KEPT_ATTEMPTS:]]
            updated = self._execute(
                "UPDATE webhooks SET state = ?, due_at = ?, attempts = attempts + 1, last = ?,"
                " lease_token = NULL, lease_expires_at = NULL WHERE task_id = ?"
                f" RETURNING {_DELIVERY_COLUMNS}",
                (state, due_at, json.dumps(last), task_id),
            ).fetchone()
            return _delivery(updated)


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


def ended_task(task_id: str, state: State, lease_token: str | None) -> EndedTask:
    """An ended task as the feed tells it, a finished one with its result's version."""
    finished = state == State.FINISHED and lease_token is not None
    return EndedTask(task_id, state, result_version(lease_token) if finished else None)


def _event_data(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))


def _state_event(state: State) -> dict[str, Any]:
    return {"state": state.value}


def _delivery(row: tuple) -> Delivery:
    (task_id, url, state, attempts, sequence, ended_at, due_at, token, expires, last) = row
    return Delivery(
        task_id=task_id,
        url=url,
        state=DeliveryState(state),
        attempts=attempts,
        sequence=sequence,
        ended_at=ended_at,
        due_at=due_at,
        lease_token=token,
        lease_expires_at=expires,
        last=tuple(Attempt.from_json(a) for a in json.loads(last)) if last else (),
    )


def _task(row: tuple) -> Task:
    (task_id, state, pipeline, attempts, error, created, updated, finished) = row[:8]
    token, expires, notes, idempotency_key, stage = row[8:]
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
        idempotency_key=idempotency_key,
        stage=stage,
    )
