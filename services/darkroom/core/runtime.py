"""What a running role needs around its app: connection pools, the registry, discovery,
logging."""

from __future__ import annotations

import threading

from darkroom.contract.roles import ADDRESS_KEYS, BY_NAME
from darkroom.core import logs
from darkroom.core.config import Config
from darkroom.core.discovery import RegistryClient, ServiceClient, ServiceLocator, keep_registered
from darkroom.core.errors import UpstreamUnavailable
from darkroom.core.health import ReadinessCheck
from darkroom.core.transport import Transport, bearer

PROBE_TIMEOUT_SECONDS = 1.0


def require_internal_token(config: Config, role: str) -> None:
    """Refuse to serve ``role`` with internal routes open, unless the network is trusted.

    An empty token turns the internal checks off (so unit tests can build apps without one);
    a running role must not end up that way by accident (an empty variable, an empty file).
    """
    if not config.internal_token and not config.trusted_network:
        raise ValueError(
            f"the {role} has no internal token (DARKROOM_INTERNAL_TOKEN is empty), so its"
            " internal routes would be open to anyone who can reach it; set a token, or set"
            " DARKROOM_TRUSTED_NETWORK=1 (--trusted-network) if the network is trusted"
        )


class Runtime:
    def __init__(self, config: Config, role: str) -> None:
        require_internal_token(config, role)
        self.config = config
        self.role = role
        self.stop = threading.Event()
        self.transport = Transport(pool_size=max(config.threads, 8))
        self.registry = RegistryClient(
            config.registry_address, self.transport, token=config.internal_token
        )
        self.locator = ServiceLocator(self.registry, ttl=config.discovery_ttl_seconds)

    def client(self, role: str, timeout: float | None = None) -> ServiceClient:
        return ServiceClient(
            self.locator,
            ADDRESS_KEYS[role],
            self.transport,
            timeout=timeout or self.config.http_timeout_seconds,
            headers=bearer(self.config.internal_token),
        )

    def register(self) -> None:
        """Advertise this role's address in the registry, in the background, while it runs."""
        keep_registered(
            self.registry, ADDRESS_KEYS[self.role], self.config.advertised(self.role), self.stop
        )

    def readiness_checks(self) -> list[ReadinessCheck]:
        """One check per role this one calls (the role table's ``calls``): it answers its
        ``/healthz``, found through the registry. Not the storage for a role that reaches its
        volume itself (``storage_volume``).

        One second each at most: the chart's probe gives ``/readyz`` three.
        """

        def check(role: str) -> ReadinessCheck:
            client = self.client(role, timeout=PROBE_TIMEOUT_SECONDS)

            def probe() -> str | None:
                try:
                    with client.request("GET", "/healthz") as response:
                        if response.status_code != 200:
                            return f"the {role} answered {response.status_code}"
                except UpstreamUnavailable as exc:
                    return str(exc.description)
                return None

            return probe

        calls = BY_NAME[self.role].calls
        if self.config.storage_volume:
            calls = tuple(role for role in calls if role != "storage")
        return [check(role) for role in calls]


def configure_logging(level: str, log_format: str = "json", **fields: str) -> None:
    """Log lines at ``level``, JSON or text (``auto``: text on a terminal); ``fields`` (e.g.
    ``role``) go on every line."""
    logs.configure(level, fmt=logs.resolve_format(log_format), **fields)
