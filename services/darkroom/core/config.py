"""Configuration from the environment (``DARKROOM_*``), overridable by command-line flags.

One flat dataclass serves every role: each role reads the fields it needs, and one set of
names works the same in ``darkroom up``, in a container and in the Helm chart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from darkroom.contract.roles import DEFAULT_PORTS

_Settings = TypeVar("_Settings")

LOG_FORMATS = ("auto", "text", "json")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of every role. Field ``name`` is read from env ``DARKROOM_NAME``."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: the role's default port
    # /healthz and /readyz also on this port, with threads of their own, for probes that must
    # answer while the role's port is flooded (the chart uses the role table's health port);
    # 0: on the role's port only
    health_port: int = 0
    # host:port other services use to reach this one; default host:port
    advertise_address: str = ""
    registry_address: str = f"127.0.0.1:{DEFAULT_PORTS['registry']}"
    # "file" keeps keys in DATA_DIR/registry.json; "configmap" in a Kubernetes ConfigMap
    registry_backend: str = "file"
    registry_configmap: str = "darkroom-registry"
    registry_namespace: str = ""
    # how long a watch may stay broken before /readyz says not ready (configmap backend)
    registry_watch_stale_seconds: float = 30.0
    data_dir: Path = Path("data")
    # the storage's data directory where this role (master, worker) mounts it too: images are
    # read and written there directly, not through the storage's HTTP API (darkroom up sets it;
    # in Kubernetes, pods that share the storage's ReadWriteMany claim); empty: through the API
    storage_volume: str = ""
    # the database role's tasks in PostgreSQL (a libpq URL, postgresql://user:pw@host/db);
    # empty: in SQLite, DATA_DIR/tasks.sqlite3
    database_url: str = dataclasses.field(default="", repr=False)
    # the master and the workers call the task store in their own processes, not through the
    # database's API: on the SQLite file in DATA_DIR (one machine: darkroom up sets it), or on
    # PostgreSQL at DATABASE_URL; the database role still sweeps and serves its other routes
    database_direct: bool = False
    # PostgreSQL connections each database process keeps at most: a request waits up to 2 s
    # for one, then answers 503. Replicas x this must stay under the server's max_connections
    # (100 by default), less what else connects.
    database_pool_size: int = 10
    # how long a resolved address is trusted before asking the registry again
    discovery_ttl_seconds: float = 5.0
    # the master accepts only op=preset:NAME, presets kept in the registry (public deployments)
    presets_only: bool = False
    max_upload_bytes: int = 50 * 1024 * 1024
    # results may be larger than uploads (a JPEG becomes a PNG)
    max_result_bytes: int = 512 * 1024 * 1024
    # a claimed task goes back to the queue when its lease is not extended for this long
    lease_seconds: float = 60.0
    max_attempts: int = 3
    # tasks whose upload never completed are failed after this long
    upload_timeout_seconds: float = 3600.0
    # longest a worker's claim request waits for work (long polling)
    claim_wait_seconds: float = 10.0
    # longest a client's long poll (/isReady, /status with ``wait``) or a claim holds a request
    max_wait_seconds: float = 30.0
    # finished and failed jobs, with their files, are removed after this long
    retention_seconds: float = 3 * 24 * 3600.0
    sweep_interval_seconds: float = 600.0
    # an upload's Idempotency-Key names its job for this long: a retry within it gets the same
    # job; the sweep forgets older keys (24 h, as the job APIs clients know from elsewhere)
    idempotency_seconds: float = 24 * 3600.0
    # an event stream (/events) ends after this long and its client reconnects: a stream
    # holds a server thread, and one whose client reads nothing must not hold it for good
    event_stream_seconds: float = 300.0
    http_timeout_seconds: float = 30.0
    # a request line and headers must arrive within this long, however steadily they trickle
    request_header_seconds: float = 10.0
    threads: int = 32
    concurrency: int = 0  # worker task loops; 0: one per CPU
    worker_mode: str = "process"  # "process" or "thread"
    max_image_pixels: int = 50_000_000
    # frames of an animated GIF, WebP or APNG kept in the result; a longer animation, or one
    # whose frames x pixels exceed max_image_pixels, gives its first frame
    max_frames: int = 1000
    # zlib level of PNG results: 1 encodes about 2x faster than 6 for files ~10% larger
    # (docs/benchmarks.md); 6 is Pillow's default, 9 the smallest
    png_compress_level: int = 1
    log_level: str = "INFO"
    # "text": one readable line per event, "json": one JSON object per line, "auto": text on a
    # terminal, JSON otherwise (containers, files)
    log_format: str = "auto"
    # a stopping worker lets its task in hand finish for this long, then gives it back unspent
    drain_seconds: float = 10.0
    # shared secret for internal routes; a role refuses to start without one unless
    # trusted_network says that anyone who can reach it may call its internal routes
    internal_token: str = dataclasses.field(default="", repr=False)
    # run without an internal token: internal routes are then open to anyone who can reach them
    trusted_network: bool = False
    # comma-separated keys for the public API and the frontend; empty: open to all
    api_keys: str = dataclasses.field(default="", repr=False)
    # Webhooks (POST /new?webhook=URL). The signing secrets, whsec_ + base64, space-separated:
    # each signs, so receivers verify with the old or the new one while it changes (rotation);
    # empty: webhooks are refused
    webhook_secret: str = dataclasses.field(default="", repr=False)
    # networks (CIDR list) webhooks may go to although they are internal (tests: 127.0.0.0/8)
    webhook_allow: str = ""
    # the cluster's pod and service networks, refused besides loopback, private, link-local and
    # the other special-purpose ones: kubeadm's defaults here; set the cluster's own when they
    # are not in a private range
    webhook_deny: str = "10.96.0.0/12 10.244.0.0/16"
    # http:// webhook URLs too, not only https:// (a trusted network, tests)
    webhook_allow_http: bool = False
    # a delivery is retried for this long after its job ended, then given up
    webhook_retry_seconds: float = 24 * 3600.0
    # the first retry's delay; each next one doubles up to an hour, and the wait is drawn at
    # random below it (full jitter), so retries from many jobs do not come in waves
    webhook_backoff_seconds: float = 5.0
    # an attempt's connection and each of its reads time out after this long, the whole attempt
    # after three times this
    webhook_timeout_seconds: float = 10.0
    # webhook deliveries one master makes at once
    webhook_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.worker_mode not in ("process", "thread"):
            raise ValueError(f"worker_mode must be 'process' or 'thread', not {self.worker_mode!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {self.log_format!r}")
        for name in (
            "max_upload_bytes",
            "max_result_bytes",
            "max_attempts",
            "threads",
            "database_pool_size",
            "max_image_pixels",
            "max_frames",
            "request_header_seconds",
            "event_stream_seconds",
            "webhook_timeout_seconds",
            "webhook_concurrency",
            "webhook_backoff_seconds",
            "webhook_retry_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError("png_compress_level must be between 0 and 9")

    def port_for(self, role: str) -> int:
        return self.port or DEFAULT_PORTS[role]

    def advertised(self, role: str) -> str:
        return self.advertise_address or f"{self.host}:{self.port_for(role)}"

    def settings_for(self, settings: type[_Settings]) -> _Settings:
        """A role's settings dataclass (``LeasePolicy``, ...) with this configuration's values
        for the fields it shares with it, so that their defaults live here only."""
        own = {field.name for field in dataclasses.fields(self)}
        wanted = {field.name for field in dataclasses.fields(settings)}  # type: ignore[arg-type]
        return settings(**{name: getattr(self, name) for name in wanted & own})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build from ``DARKROOM_*`` variables; ``overrides`` that are not None win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(f"DARKROOM_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _parse(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = type(field.default)
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind is Path:
            return Path(raw)
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"DARKROOM_{field.name.upper()}={raw!r}: {exc}") from exc
