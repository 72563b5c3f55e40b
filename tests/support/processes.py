"""The real services as processes on 127.0.0.1, started and stopped by tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from darkroom.core.config import ROLES

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


class Timeout(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, message: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy; raise Timeout after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    raise Timeout(f"timed out after {timeout} s: {message}")


class Services:
    """Each role as its own ``darkroom serve`` process, so tests can kill and restart any one."""

    def __init__(self, data_dir: Path, log_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.ports = {role: free_port() for role in ROLES}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
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
        log = (self.log_dir / f"{role}.log").open("ab")
        self.processes[role] = subprocess.Popen(
            [sys.executable, "-m", "darkroom", "serve", role, "--port", str(self.ports[role])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(role)

    def wait_ready(self, role: str) -> None:
        def ready() -> bool:
            if self.processes[role].poll() is not None:
                raise Timeout(f"{role} exited: see {self.log_dir / role}.log")
            try:
                return requests.get(self.url(role, "/readyz"), timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, START_TIMEOUT, f"{role} ready")

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def stop(self, role: str, sig: int = signal.SIGTERM) -> int:
        process = self.processes.pop(role)
        process.send_signal(sig)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for role in list(self.processes):
            self.stop(role)
