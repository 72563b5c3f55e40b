"""Running the database on its SQLite file."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.periodic import expire_periodically, run_periodically
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.database.app import create_app
from darkroom.database.store import LeasePolicy, SqliteTaskStore

# Leases and uploads that ran out are written this often (claims write them too); reads show
# them as expired at once, so this bounds only how stale the stored rows may be.
LEASE_SWEEP_SECONDS = 1.0


def open_store(config: Config) -> SqliteTaskStore:
    policy = config.settings_for(LeasePolicy)
    return SqliteTaskStore(config.data_dir / "tasks.sqlite3", policy)


def run(config: Config) -> None:
    store = open_store(config)
    runtime = Runtime(config, "database")
    expire_periodically(
        store.purge, config.retention_seconds, config.sweep_interval_seconds, runtime.stop
    )
    run_periodically(store.expire, LEASE_SWEEP_SECONDS, runtime.stop, "lease-sweep")
    serve(create_app(config, store), config, "database", on_listening=runtime.register)
