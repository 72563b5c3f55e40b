"""Running the master with clients for the database and the storage."""

from __future__ import annotations

from darkroom.contract.pipeline import PipelineLimits
from darkroom.core.config import Config
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.database.client import DatabaseClient
from darkroom.master.app import create_app
from darkroom.master.presets import PipelineResolver
from darkroom.storage.client import StorageClient


def run(config: Config) -> None:
    runtime = Runtime(config, "master")
    limits = config.settings_for(PipelineLimits)
    app = create_app(
        config,
        DatabaseClient(runtime.client("database")),
        StorageClient(runtime.client("storage")),
        check_pipeline=PipelineResolver(
            runtime.locator.value, limits, presets_only=config.presets_only
        ),
        readiness=runtime.readiness_checks(),
    )
    serve(
        app,
        config,
        "master",
        upload_limits={"/new": config.max_upload_bytes},
        on_listening=runtime.register,
    )
