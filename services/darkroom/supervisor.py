"""``darkroom up``: every role as a child process on 127.0.0.1, kept running as Kubernetes would."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import requests

from darkroom.contract.roles import ROLES
from darkroom.core.atomicfile import write_atomically
from darkroom.core.backoff import Backoff

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 20.0
# A child that ran this long before dying is restarted at once again, not after a grown backoff.
STABLE_SECONDS = 10.0


def internal_token(data_dir: Path) -> str:
    """The data directory's service token, made on first use and readable by its owner only."""
    path = data_dir / "internal-token"
    # Atomic, so a crash or a full disk never leaves an empty token (which would turn the
    # checks off); never overwriting, so two first starts agree on one token.
    with contextlib.suppress(FileExistsError):
        write_atomically(path, secrets.token_urlsafe(32), overwrite=False)
    return path.read_text().strip()


class Child:
    def __init__(self, role: str, port: int, env: dict[str, str]) -> None:
        self.role, self.port, self._env = role, port, env
        self.process: subprocess.Popen[bytes] | None = None
        self.backoff = Backoff(first=0.5, cap=10.0)
        self.restart_at = 0.0
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        command = [sys.executable, "-m", "darkroom", "serve", self.role, "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=self._env)

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                if requests.get(self.url("/readyz"), timeout=1).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return False


class Supervisor:
    def __init__(self, data_dir: Path, ports: dict[str, int], workers: int = 0) -> None:
        self._data_dir = data_dir.resolve()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DARKROOM_HOST": HOST,
            "DARKROOM_DATA_DIR": str(self._data_dir),
            "DARKROOM_REGISTRY_ADDRESS": f"{HOST}:{ports['registry']}",
            "DARKROOM_ADVERTISE_ADDRESS": "",
            "DARKROOM_INTERNAL_TOKEN": os.environ.get("DARKROOM_INTERNAL_TOKEN")
            or internal_token(self._data_dir),
        }
        if workers:
            env["DARKROOM_CONCURRENCY"] = str(workers)
        self._children = [Child(role, ports[role], env) for role in ROLES]
        self._stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for child in self._children:
                child.start()
                if not child.wait_ready(time.monotonic() + READY_TIMEOUT_SECONDS):
                    if self._stopping:
                        return 0
                    print(f"darkroom: {child.role} did not become ready", file=sys.stderr)
                    return 1
            self._announce()
            while not self._stopping:
                self._restart_dead()
                time.sleep(0.2)
            return 0
        finally:
            self._stop_all()

    def _announce(self) -> None:
        by_role = {child.role: child for child in self._children}
        print(
            f"Darkroom is up (data in {self._data_dir}):\n"
            f"  web page  {by_role['frontend'].url('/')}\n"
            f"  API       {by_role['master'].url('/')}  (POST /new, GET /isReady, /status, /get)\n"
            f"  registry  {by_role['registry'].url('/list')}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at == 0.0:
                if now - child.started_at >= STABLE_SECONDS:
                    child.backoff.reset()
                child.restart_at = now + child.backoff.next()
                print(
                    f"darkroom: {child.role} exited ({child.process.returncode}); restarting",
                    file=sys.stderr,
                    flush=True,
                )
            elif now >= child.restart_at:
                child.restart_at = 0.0
                child.start()

    def _stop_all(self) -> None:
        running = [
            c.process for c in reversed(self._children) if c.process and c.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
