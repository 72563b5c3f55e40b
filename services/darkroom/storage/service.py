"""Running the storage over its data directory."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.storage.app import create_app
from darkroom.storage.store import FileImageStore


def run(config: Config) -> None:
    store = FileImageStore(config.data_dir)
    Runtime(config, "storage").register()
    serve(create_app(config, store), config, "storage", max_body_bytes=config.max_result_bytes)
