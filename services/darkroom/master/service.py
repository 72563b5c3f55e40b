"""Running the master with clients for the database and the storage."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from darkroom.contract.pipeline import PipelineLimits
from darkroom.core.config import Config
from darkroom.core.runtime import Runtime
from darkroom.core.server import serve
from darkroom.database.direct import database_for
from darkroom.master.app import create_app
from darkroom.master.events import EventStreamPolicy
from darkroom.master.finished import FinishedTasks
from darkroom.master.presets import PipelineResolver
from darkroom.master.unfinished import UnfinishedTasks
from darkroom.master.webhooks import (
    Deliveries,
    WebhookGuard,
    WebhookMetrics,
    WebhookSender,
    WebhookSettings,
)
from darkroom.storage.client import storage_for


def run(config: Config) -> None:
    runtime = Runtime(config, "master")
    limits = config.settings_for(PipelineLimits)
    database = database_for(config, runtime.client("database"))
    webhook_settings = config.settings_for(WebhookSettings)
    webhooks = WebhookGuard(webhook_settings)
    finished = FinishedTasks(config.retention_seconds)
    unfinished = UnfinishedTasks(database, finished, runtime.stop)
    unfinished.start()
    registry = CollectorRegistry()
    app = create_app(
        config,
        database,
        storage_for(config, runtime.client("storage")),
        check_pipeline=PipelineResolver(
            runtime.locator.value, limits, presets_only=config.presets_only
        ),
        readiness=runtime.readiness_checks(),
        webhooks=webhooks,
        event_streams=EventStreamPolicy(max_stream_seconds=config.event_stream_seconds),
        finished=finished,
        unfinished=unfinished,
        registry=registry,
    )
    # Without a secret no webhook is taken, and none could be signed.
    deliveries = None
    if webhooks.enabled:
        sender = WebhookSender(webhooks, webhook_settings.webhook_timeout_seconds)
        metrics = WebhookMetrics(registry)
        deliveries = Deliveries(database, sender, webhook_settings, runtime.stop, metrics=metrics)
        deliveries.start()
    try:
        serve(
            app,
            config,
            "master",
            upload_limits={"/new": config.max_upload_bytes},
            on_listening=runtime.register,
            on_stopping=unfinished.close,
        )
    finally:
        if deliveries is not None:
            deliveries.close()
        database.close()
