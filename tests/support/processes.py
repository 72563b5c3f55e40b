"""The real services as processes on 127.0.0.1, one ``darkroom serve`` each, for tests.

``HOST``, ``Timeout``, ``free_port`` and ``wait_until`` are the harness's, named here too.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import requests

from darkroom.contract.roles import ROLES
from harness.environment import serve_command, service_env, settings_env
from harness.launch import HOST as HOST
from harness.launch import Launched
from harness.launch import Timeout as Timeout
from harness.launch import free_port as free_port
from harness.launch import wait_until as wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# A probe slower than this would be a kubelet's timeout (the chart's is a second).
PROBE_SECONDS = 1.0


class Services:
    """Each role as its own ``darkroom serve`` process, so tests can kill and restart any one."""

    def __init__(self, data_dir: Path, log_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.ports = {role: free_port() for role in ROLES}
        # the roles started with a health listener of their own (start_with_health_ports)
        self.health_ports: dict[str, int] = {}
        self.processes: dict[str, Launched] = {}
        # the children run this checkout's code, whatever copy pip installed
        defaults = {
            "host": HOST,
            "data_dir": str(data_dir),
            "registry_address": f"{HOST}:{self.ports['registry']}",
            "discovery_ttl_seconds": "1",
            "claim_wait_seconds": "2",
            "log_level": "INFO",
        }
        self.env = service_env(token=secrets.token_urlsafe(24), **{**defaults, **settings})

    def url(self, role: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[role]}{path}"

    def start(self, role: str, wait: bool = True, **settings: str) -> None:
        env = {**self.env, **settings_env(settings)}
        command = serve_command(role, self.ports[role])
        self.processes[role] = Launched(role, command, env, self.log_dir / f"{role}.log")
        if wait:
            self.wait_ready(role)

    def wait_ready(self, role: str) -> None:
        self.processes[role].wait_for_url(self.url(role, "/readyz"), START_TIMEOUT, interval=0.02)

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def start_with_health_ports(
        self, roles: Iterable[str], settings: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Start ``roles`` in turn, each with its probes on a port of their own (as in the
        chart) and with its own ``settings[role]``."""
        for role in roles:
            self.health_ports[role] = free_port()
            own = (settings or {}).get(role, {})
            self.start(role, health_port=str(self.health_ports[role]), **own)

    def assert_probes_answer(self) -> None:
        """Every role started with a health port answers /healthz and /readyz there with 200
        within PROBE_SECONDS."""
        for role, port in self.health_ports.items():
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                answer = requests.get(f"http://{HOST}:{port}{path}", timeout=PROBE_SECONDS)
                took = time.monotonic() - started
                assert answer.status_code == 200, f"{role}{path}: {answer.text}"
                assert took < PROBE_SECONDS, f"{role}{path} took {took:.2f} s"

    def stop(self, role: str, sig: int = signal.SIGTERM) -> int:
        return self.processes.pop(role).stop(STOP_TIMEOUT, sig)

    def stop_all(self) -> None:
        for role in list(self.processes):
            self.stop(role)
