"""Running the frontend."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.frontend.app import FORM_OVERHEAD_BYTES, create_app
from darkroom.master.client import MasterClient


def run(config: Config) -> None:
    runtime = Runtime(config, "frontend")
    app = create_app(
        config, MasterClient(runtime.client("master")), readiness=runtime.readiness_checks()
    )
    serve(
        app,
        config,
        "frontend",
        upload_limits={"/submitTask": config.max_upload_bytes + FORM_OVERHEAD_BYTES},
        on_listening=runtime.register,
    )
