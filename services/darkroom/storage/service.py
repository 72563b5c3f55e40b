"""Running the storage over its data directory."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.imagefiles import FileImageStore
from darkroom.core.periodic import expire_periodically
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.storage.app import create_app


def run(config: Config) -> None:
    store = FileImageStore(config.data_dir)
    runtime = Runtime(config, "storage")
    expire_periodically(
        store.purge, config.retention_seconds, config.sweep_interval_seconds, runtime.stop
    )
    serve(
        create_app(config, store),
        config,
        "storage",
        upload_limits={"/sendImage": config.max_result_bytes},
        on_listening=runtime.register,
    )
