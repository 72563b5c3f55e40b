"""Running the database on its SQLite file."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.periodic import expire_periodically
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.database.app import create_app
from darkroom.database.store import LeasePolicy, SqliteTaskStore


def open_store(config: Config) -> SqliteTaskStore:
    policy = config.settings_for(LeasePolicy)
    return SqliteTaskStore(config.data_dir / "tasks.sqlite3", policy)


def run(config: Config) -> None:
    store = open_store(config)
    runtime = Runtime(config, "database")
    expire_periodically(
        store.purge, config.retention_seconds, config.sweep_interval_seconds, runtime.stop
    )
    serve(create_app(config, store), config, "database", on_listening=runtime.register)
