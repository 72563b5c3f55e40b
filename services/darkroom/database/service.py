"""Running the database on its SQLite file, or on PostgreSQL (``DARKROOM_DATABASE_URL``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from darkroom.core.config import Config
from darkroom.core.periodic import expire_periodically, run_periodically
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.database.app import create_app
from darkroom.database.pgstore import PostgresTaskStore, redacted
from darkroom.database.store import LeasePolicy, SqliteTaskStore, StoreUnavailable, TaskStore

log = logging.getLogger(__name__)

# Leases and uploads that ran out are written this often (claims write them too); reads show
# them as expired at once, so this bounds only how stale the stored rows may be.
LEASE_SWEEP_SECONDS = 1.0


def open_store(config: Config) -> TaskStore:
    """PostgreSQL when ``database_url`` is set, else SQLite in the data directory."""
    policy = config.settings_for(LeasePolicy)
    if config.database_url:
        return PostgresTaskStore(config.database_url, policy, pool_size=config.database_pool_size)
    return SqliteTaskStore(sqlite_path(config), policy)


def sqlite_path(config: Config) -> Path:
    return config.data_dir / "tasks.sqlite3"


def _where(config: Config) -> str:
    """Where the tasks are, fit for a log: a PostgreSQL URL without its password."""
    return redacted(config.database_url) if config.database_url else str(sqlite_path(config))


def sweep_leases(store: TaskStore) -> None:
    """Write the leases that ran out; while PostgreSQL is away, a warning line instead of a
    traceback every second (the requests' own warnings say the same)."""
    try:
        store.expire()
    except StoreUnavailable as exc:
        log.warning("lease sweep skipped: task database unavailable", extra={"error": str(exc)})


def open_store_or_exit(config: Config) -> TaskStore:
    """``open_store``, or one line saying why it cannot be opened and the process's exit: the
    supervisor (or Kubernetes) starts the role again, which retries the connection."""
    log.info("opening the task store", extra={"database": _where(config)})
    try:
        return open_store(config)
    except StoreUnavailable as exc:
        log.error("task store unreachable", extra={"database": _where(config), "error": str(exc)})
        raise SystemExit(1) from None


def run(config: Config) -> None:
    store = open_store_or_exit(config)
    runtime = Runtime(config, "database")
    expire_periodically(
        store.purge, config.retention_seconds, config.sweep_interval_seconds, runtime.stop
    )
    run_periodically(
        functools.partial(sweep_leases, store), LEASE_SWEEP_SECONDS, runtime.stop, "lease-sweep"
    )
    try:
        serve(
            create_app(config, store),
            config,
            "database",
            on_listening=runtime.register,
            on_stopping=store.ended_feed.close,
        )
    finally:
        store.close()
