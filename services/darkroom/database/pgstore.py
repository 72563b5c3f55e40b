"""Tasks in PostgreSQL: the task store's rules on a database several replicas share.

The life-cycle rules (``create``, ``enqueue``, ``heartbeat``, ``finish``, ``fail``,
``release``, ``retry``, ``cancel``, ``purge``), idempotency keys, webhook deliveries, events and
the long polls (``claim``, ``watch``, ``events``) are ``SqlTaskStore``'s (sqlstore.py), which
the SQLite store shares: they are written in portable SQL over a few primitives
(``_transaction``, ``_execute``, ``_read``, ``_row``, ``_seen``, ``_lapsed_rows``,
``_claim_once``) that this class implements on PostgreSQL, so each rule is stated once for both
stores.

What differs:

* Claims take the oldest queued row ``FOR UPDATE SKIP LOCKED``: replicas claiming at once
  never wait for each other nor get the same task; webhook deliveries are claimed the same way.
  Every change locks its row first (``_FOR_UPDATE``), so the events a change writes are
  numbered after the task's last without a race. An idempotency key is claimed by inserting
  it: of two replicas at once, the second waits on the unique index, then finds the first's.
* Wake-ups cross replicas: a trigger sends ``NOTIFY`` when a task's state changes or it gets an
  event (a processing stage: on the ``darkroom_task`` channel, the task id as payload) and when
  one becomes claimable (``darkroom_queue``). PostgreSQL delivers them at commit, so a woken
  watcher reads the change. One listener connection per store dispatches them to the per-task
  events and claim condition of the shared long polls (the SQLite store sets them after its
  commits); if it is cut off, the half-second ticks of the long polls still notice every
  change, only later.
* The feed of ended tasks (``ended``) comes from a third channel, ``darkroom_ended``, whose
  trigger sends each end as ``id state lease``: every replica's feed has every replica's ends,
  in commit order. A listener that reconnects starts a new epoch of its feed (followers start
  over), since what was sent while it was away is lost.
* The schema is created and migrated at start under an advisory lock, so replicas starting at
  once take turns; ``schema_version`` says which migrations ran.
* Times are the injected clock's epoch seconds (double precision), as in SQLite: all replicas
  must keep their clocks in sync (NTP) for leases to expire on time.
* ``lease_expiries`` and ``finishes_refused`` count what this process saw, as in SQLite; the
  metrics of all replicas add up to the system's.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from darkroom.contract.events import EventKind
from darkroom.contract.tasks import ENDED_STATES, EndedTask
from darkroom.contract.webhooks import DeliveryState
from darkroom.core.backoff import Backoff
from darkroom.core.ids import new_lease_token, new_task_id
from darkroom.database.sqlstore import (
    _COLUMNS,
    LeasePolicy,
    SqlTaskStore,
    State,
    StoreUnavailable,
    Task,
    TaskNotFound,
    _event_data,
    _lapsed,
    _state_event,
    _task,
    ended_task,
)

log = logging.getLogger(__name__)

TASK_CHANNEL = "darkroom_task"
QUEUE_CHANNEL = "darkroom_queue"
ENDED_CHANNEL = "darkroom_ended"
# Any constant both replicas agree on: the key of the advisory lock migrations run under.
_MIGRATION_LOCK = 0x6461726B726F6F6D  # "darkroom"
_UPLOADING, _QUEUED, _IN_PROGRESS = State.UPLOADING.code, State.QUEUED.code, State.IN_PROGRESS.code
_ENDED = (State.FINISHED.code, State.FAILED.code)  # before issue 16 (the first migration)
_ALL_ENDED = tuple(sorted(state.code for state in ENDED_STATES))

# Each entry runs once, in order, in the migration's transaction; never edit one that shipped,
# append a new one.
_MIGRATIONS = (
    f"""
    CREATE TABLE tasks (
        id text PRIMARY KEY,
        -- insertion order, for ties in created_at (SQLite's rowid)
        seq bigint GENERATED ALWAYS AS IDENTITY,
        state smallint NOT NULL,
        pipeline text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        error text,
        lease_token text,
        lease_expires_at double precision,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        finished_at double precision,
        notes text
    ) WITH (
        -- A queue table churns: each task is updated four times or more, then deleted, so dead
        -- rows pile up at the job rate whatever the table's size. Vacuum after a fixed number of
        -- them (the default waits for 20 % of the table, which retention makes large) and
        -- without the cost-based pauses, so the queue's index scans stay short.
        autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0,
        autovacuum_analyze_scale_factor = 0.02,
        -- Free room on each page: a heartbeat changes no indexed column, so its new row version
        -- stays on the page (a HOT update) without touching any index.
        fillfactor = 80
    );
    -- Partial indexes: each holds only the few rows its query looks for, and none is on
    -- lease_expires_at or updated_at, which heartbeats change.
    CREATE INDEX tasks_queue ON tasks (created_at, seq) WHERE state = {_QUEUED};
    CREATE INDEX tasks_leased ON tasks (created_at) WHERE state = {_IN_PROGRESS};
    CREATE INDEX tasks_uploading ON tasks (created_at) WHERE state = {_UPLOADING};
    CREATE INDEX tasks_ended ON tasks (finished_at) WHERE state IN {_ENDED};
    CREATE INDEX tasks_recent ON tasks (created_at, seq);

    CREATE FUNCTION darkroom_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{TASK_CHANNEL}', NEW.id);
        IF NEW.state = {_QUEUED} THEN
            PERFORM pg_notify('{QUEUE_CHANNEL}', '');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_changed AFTER UPDATE OF state ON tasks FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION darkroom_task_changed();
    """,
    # Issue 16: cancelled tasks, idempotency keys, webhook deliveries, progress events.
    f"""
    ALTER TABLE tasks ADD COLUMN idempotency_key text, ADD COLUMN stage text;
    -- retention purges cancelled tasks too
    DROP INDEX tasks_ended;
    CREATE INDEX tasks_ended ON tasks (finished_at) WHERE state IN {_ALL_ENDED};

    CREATE TABLE webhooks (
        task_id text PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
        url text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        sequence integer NOT NULL DEFAULT 0,
        ended_at double precision,
        due_at double precision,
        lease_token text,
        lease_expires_at double precision,
        last text
    ) WITH (fillfactor = 80);
    -- only the deliveries a master may claim: the rows of jobs not ended have no due_at
    CREATE INDEX webhooks_due ON webhooks (due_at)
        WHERE state = '{DeliveryState.PENDING}' AND due_at IS NOT NULL;

    CREATE TABLE idempotency_keys (
        key text PRIMARY KEY,
        task_id text NOT NULL,
        body_sha256 text,
        created_at double precision NOT NULL
    );
    CREATE INDEX idempotency_keys_by_task ON idempotency_keys (task_id);
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

    -- SQLite deletes a task's events with a trigger; here the foreign key does
    CREATE TABLE events (
        task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        at double precision NOT NULL,
        kind text NOT NULL,
        data text NOT NULL,
        PRIMARY KEY (task_id, seq)
    );
    -- A stage event changes no state: its NOTIFY wakes the events() long polls of every
    -- replica. PostgreSQL sends one of equal notifications per transaction, so a state change
    -- with its event costs one.
    CREATE FUNCTION darkroom_event_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{TASK_CHANNEL}', NEW.task_id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_added AFTER INSERT ON events FOR EACH ROW
        EXECUTE FUNCTION darkroom_event_added();
    """,
    # Issue 12: the feed of ended tasks, which the masters follow to answer polls from memory.
    f"""
    CREATE FUNCTION darkroom_task_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify(
            '{ENDED_CHANNEL}', NEW.id || ' ' || NEW.state || ' ' || coalesce(NEW.lease_token, '')
        );
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_ended AFTER UPDATE OF state ON tasks FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN {_ALL_ENDED})
        EXECUTE FUNCTION darkroom_task_ended();
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
# The columns as the claim's UPDATE ... FROM returns them (its subquery has an id too).
_TASK_COLUMNS = ", ".join(f"tasks.{name.strip()}" for name in _COLUMNS.split(","))

# Idle connections die silently behind NAT and load balancers: keepalives notice in ~25 s.
_CONNECTION_SETTINGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "application_name": "darkroom-database",
}


def _with_defaults(url: str) -> str:
    """``url`` with ``_CONNECTION_SETTINGS`` for what it does not set itself (the operator's
    URL wins)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # libpq's message quotes the URL, password and all
        raise ValueError("DARKROOM_DATABASE_URL is not a libpq URL or key=value string") from None
    return make_conninfo(url, **{k: v for k, v in _CONNECTION_SETTINGS.items() if k not in given})


def redacted(url: str) -> str:
    """``url`` (a libpq URL or key=value string) fit for a log: the password masked."""
    try:
        settings = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "[unparseable database URL]"
    if "password" in settings:
        settings["password"] = "[redacted]"
    return make_conninfo(**settings)


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; the version found. Safe from several replicas
    at once: the advisory lock lets one migrate while the others wait, then find nothing to do."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = row[0] if row else 0
        if found > SCHEMA_VERSION:
            log.warning(
                "database schema is newer than this code",
                extra={"found": found, "known": SCHEMA_VERSION},
            )
        for step in _MIGRATIONS[found:]:
            conn.execute(step)
        if row is None:
            conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
        elif found < SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
    return found


def _check_idle_connection(conn: psycopg.Connection) -> None:
    """Refuse a pooled connection PostgreSQL has closed (a restart), so the pool replaces it
    before a request draws it, without a round trip each time (the pool's own check is a query).

    An idle connection has nothing to read: data waiting on its socket is the server's goodbye
    (an error, the end of the stream), or something as unexpected; either way, a new one.
    """
    if not conn.closed and select.select([conn.fileno()], [], [], 0)[0]:
        conn.close()  # so the pool discards it rather than keeping it for the next request
    if conn.closed:
        raise psycopg.OperationalError("the server closed the idle connection")


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """PostgreSQL unreachable, restarting, or a transaction it aborted (all worth a retry)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc


class _Listener(threading.Thread):
    """LISTENs on one connection of its own; hands each notification to ``on_task`` or
    ``on_queue``, and calls ``on_connected`` after each (re)connection, when what happened
    while it was away is unknown."""

    def __init__(
        self,
        url: str,
        on_task: Callable[[str], None],
        on_queue: Callable[[], None],
        on_connected: Callable[[], None],
        on_ended: Callable[[EndedTask], None],
    ) -> None:
        super().__init__(name="task-notifications", daemon=True)
        self._url = url
        self._on_task, self._on_queue, self._on_connected = on_task, on_queue, on_connected
        self._on_ended = on_ended
        self._stopping = threading.Event()
        self.listening = threading.Event()

    def stopping(self) -> None:
        """Stop at the next notification, or within half a second."""
        self._stopping.set()

    def run(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self._listen(backoff)
            except psycopg.Error as exc:
                self.listening.clear()
                delay = backoff.next()
                log.warning(
                    "task notifications lost, reconnecting",
                    extra={"error": str(exc).strip(), "retry_in": delay},
                )
                self._stopping.wait(delay)

    def _listen(self, backoff: Backoff) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(f"LISTEN {TASK_CHANNEL}")
            conn.execute(f"LISTEN {QUEUE_CHANNEL}")
            conn.execute(f"LISTEN {ENDED_CHANNEL}")
            self._on_connected()  # before listening is told: the feed's epoch is the new one
            self.listening.set()
            backoff.reset()
            while not self._stopping.is_set():
                for notification in conn.notifies(timeout=0.5):
                    if self._stopping.is_set():
                        return
                    if notification.channel == QUEUE_CHANNEL:
                        self._on_queue()
                    elif notification.channel == ENDED_CHANNEL:
                        self._on_ended(_ended_from_payload(notification.payload))
                    else:
                        self._on_task(notification.payload)


class PostgresTaskStore(SqlTaskStore):
    """Tasks in a PostgreSQL database (``url``, a libpq URL), shared by any number of stores."""

    def __init__(
        self,
        url: str,
        policy: LeasePolicy,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_task_id,
        new_token: Callable[[], str] = new_lease_token,
        pool_size: int = 10,
        listen_timeout: float = 10.0,
    ) -> None:
        super().__init__(policy, clock, new_id, new_token)
        self._local = threading.local()  # the transaction in progress on this thread
        self._counters_lock = threading.Lock()
        url = _with_defaults(url)
        with _unavailable_as_store_error(), psycopg.connect(url) as conn:
            migrate(conn)
        self._pool = ConnectionPool(
            url,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=pool_size,
            check=_check_idle_connection,
            timeout=2.0,  # waiting longer for a connection only delays the 503
            open=True,
            name="darkroom-tasks",
        )
        self._listener = _Listener(
            url,
            self._notify_watchers,
            self._wake_claimer,
            self._reconnected,
            lambda ended: self.ended_feed.add([ended]),
        )
        self._listener.start()
        self.wait_listening(listen_timeout)

    # -- primitives the shared rules are written over ----------------------------------
    @contextlib.contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[None]:
        """One transaction on a pooled connection, for this thread's ``_row``/``_update`` calls;
        rolled back on any error. Its NOTIFYs reach the listeners (this store's too) at commit.

        Every one is durable (``durable`` is SQLite's): PostgreSQL flushes the commits of
        concurrent transactions together, and ``SET LOCAL synchronous_commit`` would cost a
        round trip of its own."""
        expiries = 0
        with (
            _unavailable_as_store_error(),
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor() as cursor,
        ):
            self._local.cursor, self._local.expiries = cursor, 0
            # rows read or written in this transaction: locked, so they stay as seen
            self._local.rows = {}
            try:
                yield
                expiries = self._local.expiries
            finally:
                self._local.cursor = None
        with self._counters_lock:
            self.lease_expiries += expiries

    _FOR_UPDATE = " FOR UPDATE"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def _execute(self, query: str, params: Sequence[object] = ()) -> psycopg.Cursor:
        """A shared statement (``?`` placeholders, no ``%``) in the transaction in progress."""
        return self._cursor.execute(_placeholders(query), _params(params))

    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple]:
        return self._statement(_placeholders(query), _params(params))

    def _mark_changed(self, task_id: str) -> None:
        """Nothing to do: the triggers' NOTIFY wakes the watchers of every replica at commit."""

    def _mark_ended(self, task: Task) -> None:
        """Nothing to do: the ``darkroom_ended`` NOTIFY brings it to every replica's feed."""

    def _count_expiry(self) -> None:
        self._local.expiries += 1  # counted once committed

    @property
    def _cursor(self) -> psycopg.Cursor:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            raise RuntimeError("a store primitive was called outside a transaction")
        return cursor

    def _row(self, task_id: str) -> Task:
        """The task's row, locked until the transaction ends (so read once: a rule that looks
        twice, as ``finish`` does, costs no second round trip)."""
        if (task := self._local.rows.get(task_id)) is not None:
            return task
        query = f"SELECT {_COLUMNS} FROM tasks WHERE id = %s FOR UPDATE"
        row = self._cursor.execute(query, (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return self._seen(_task(row))

    def _seen(self, task: Task) -> Task:
        self._local.rows[task.id] = task
        return task

    def _lapsed_rows(self, now: float) -> list[Task]:
        """Tasks whose lease or upload ran out, locked; rows another replica holds are skipped
        (it is changing them, so they are its business)."""
        rows = self._cursor.execute(
            f"SELECT {_COLUMNS} FROM tasks"
            " WHERE (state = %s AND lease_expires_at < %s) OR (state = %s AND created_at < %s)"
            " FOR UPDATE SKIP LOCKED",
            self._lapse_bounds(now),
        ).fetchall()
        return [_task(row) for row in rows]

    def _lapse_bounds(self, now: float) -> tuple[int, float, int, float]:
        return (_IN_PROGRESS, now, _UPLOADING, now - self._policy.upload_timeout_seconds)

    def _claim_once(self) -> Task | None:
        """Lapses written first (as in SQLite), then the claim and its state event in one
        transaction, pipelined: sent at once, so one round trip, as a lone statement would be.

        The event is a statement of its own, which finds the claimed row by its new lease
        token: it is numbered from what the claim's row lock lets it see (a statement's
        snapshot predates the locks it takes, so in the claim's own statement a change
        committed meanwhile by the row's previous holder could be missed)."""
        now = self._clock()
        self.expire()
        token = self._new_token()
        with (
            _unavailable_as_store_error(),
            self._pool.connection() as conn,
            conn.pipeline(),
            conn.transaction(),
        ):
            claimed = conn.execute(
                "WITH next AS (SELECT id FROM tasks WHERE state = %s ORDER BY created_at, seq"
                " LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE tasks SET state = %s, attempts = tasks.attempts + 1, lease_token = %s,"
                " lease_expires_at = %s, updated_at = %s"
                f" FROM next WHERE tasks.id = next.id RETURNING {_TASK_COLUMNS}",
                (_QUEUED, _IN_PROGRESS, token, now + self._policy.lease_seconds, now),
            )
            conn.execute(
                "INSERT INTO events (task_id, seq, at, kind, data)"
                " SELECT id, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events"
                " WHERE events.task_id = tasks.id), %s, %s, %s"
                # the partial index of tasks in progress: as many rows as task loops run
                " FROM tasks WHERE state = %s AND lease_token = %s",
                (
                    now,
                    EventKind.STATE.value,
                    _event_data(_state_event(State.IN_PROGRESS)),
                    _IN_PROGRESS,
                    token,
                ),
            )
        row = claimed.fetchone()
        return _task(row) if row else None

    # -- wake-ups -----------------------------------------------------------------------
    def _notify_claimers(self) -> None:
        """Nothing to do after a commit: the trigger's NOTIFY wakes the claimers of every
        replica, this one's included (``_wake_claimer``)."""

    def _reconnected(self) -> None:
        """After the listener (re)connects: notifications may have been missed, and when the
        listener's connection was lost (PostgreSQL restarted), the pooled ones are likely dead
        too: all are checked now, rather than each by the request that draws it (the pool
        waits a growing backoff between two failed checks)."""
        self._pool.check()
        self.ended_feed.reset()
        self._notify_watchers()
        with self._queue_changed:
            self._generation += 1
            self._queue_changed.notify_all()

    def wait_listening(self, timeout: float) -> bool:
        """Whether the store hears other replicas' changes (waiting up to ``timeout`` for it)."""
        return self._listener.listening.wait(timeout)

    # -- the rest of the interface ------------------------------------------------------
    def _statement(self, query: str, params: tuple = ()) -> list[tuple]:
        """One statement on a pooled connection, in autocommit (a transaction of its own)."""
        with _unavailable_as_store_error(), self._pool.connection() as conn:
            return conn.execute(query, params).fetchall()

    def get(self, task_id: str) -> Task:
        rows = self._statement(f"SELECT {_COLUMNS} FROM tasks WHERE id = %s", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        return _lapsed(_task(rows[0]), self._clock(), self._policy)

    def recent(self, limit: int) -> list[Task]:
        rows = self._statement(
            f"SELECT {_COLUMNS} FROM tasks ORDER BY created_at DESC, seq DESC LIMIT %s", (limit,)
        )
        return [_task(row) for row in rows]

    def expire(self) -> int:
        now = self._clock()
        lapsed = self._statement(
            "SELECT 1 FROM tasks WHERE (state = %s AND lease_expires_at < %s)"
            " OR (state = %s AND created_at < %s) LIMIT 1",
            self._lapse_bounds(now),
        )
        if not lapsed:
            return 0
        with self._transaction():
            return self._expire(now)

    @property
    def pool_size(self) -> int:
        """The most connections this store opens to PostgreSQL (DATABASE_POOL_SIZE)."""
        return self._pool.max_size

    def close(self) -> None:
        self._listener.stopping()
        with contextlib.suppress(StoreUnavailable):
            # wakes the listener out of its wait at once (and the others' for nothing)
            self._statement("SELECT pg_notify(%s, '')", (TASK_CHANNEL,))
        self._listener.join(5)
        self._pool.close()


def _ended_from_payload(payload: str) -> EndedTask:
    """The ``darkroom_ended`` trigger's ``id state lease`` as the feed tells it."""
    task_id, code, lease = payload.split(" ")
    state = State.from_code(int(code))
    return ended_task(task_id, state, lease or None)


def _placeholders(query: str) -> str:
    """Shared SQL's ``?`` placeholders as psycopg's ``%s`` (the shared SQL has no ``?`` nor
    ``%`` of its own)."""
    return query.replace("?", "%s")


def _params(params: Sequence[object]) -> tuple:
    """Task states as their codes, as SQLite's adapter stores them (psycopg would send a
    ``StrEnum``'s value, the state's wire name)."""
    return tuple(value.code if isinstance(value, State) else value for value in params)
