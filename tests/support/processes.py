"""The real services as processes on 127.0.0.1, started and stopped by tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

from darkroom.contract.roles import ROLES
from launch import HOST as HOST
from launch import Launched
from launch import Timeout as Timeout
from launch import free_port as free_port
from launch import wait_until as wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class Services:
    """Each role as its own ``darkroom serve`` process, so tests can kill and restart any one."""

    def __init__(self, data_dir: Path, log_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.ports = {role: free_port() for role in ROLES}
        self.processes: dict[str, Launched] = {}
        self.env = {
            **os.environ,
            # the children run this checkout's code, whatever copy pip installed
            "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "services"),
            "DARKROOM_HOST": HOST,
            "DARKROOM_DATA_DIR": str(data_dir),
            "DARKROOM_REGISTRY_ADDRESS": f"{HOST}:{self.ports['registry']}",
            "DARKROOM_DISCOVERY_TTL_SECONDS": "1",
            "DARKROOM_CLAIM_WAIT_SECONDS": "2",
            "DARKROOM_LOG_LEVEL": "INFO",
            "DARKROOM_INTERNAL_TOKEN": secrets.token_urlsafe(24),
            **{f"DARKROOM_{name.upper()}": value for name, value in settings.items()},
        }

    def url(self, role: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[role]}{path}"

    def start(self, role: str, wait: bool = True, **settings: str) -> None:
        env = {**self.env, **{f"DARKROOM_{k.upper()}": v for k, v in settings.items()}}
        command = [sys.executable, "-m", "darkroom", "serve", role, "--port", str(self.ports[role])]
        self.processes[role] = Launched(role, command, env, self.log_dir / f"{role}.log")
        if wait:
            self.wait_ready(role)

    def wait_ready(self, role: str) -> None:
        self.processes[role].wait_for_url(self.url(role, "/readyz"), START_TIMEOUT, interval=0.02)

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def stop(self, role: str, sig: int = signal.SIGTERM) -> int:
        return self.processes.pop(role).stop(STOP_TIMEOUT, sig)

    def stop_all(self) -> None:
        for role in list(self.processes):
            self.stop(role)
