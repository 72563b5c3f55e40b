"""``darkroom up``: every role as a child process on 127.0.0.1, kept running as Kubernetes would.

Before starting, every port is checked: one already taken stops ``darkroom up`` at once, naming
the process that holds it. Children stop with the supervisor, even when it is SIGKILLed
(darkroom.core.lifecycle), and run in their own process group, so a terminal's Ctrl-C reaches
the supervisor only and it stops them in ``STOP_ORDER``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import requests

from darkroom.contract.roles import ROLES
from darkroom.core.atomicfile import make_private_directory, write_atomically
from darkroom.core.config import Config
from darkroom.core.lifecycle import PARENT_PID_ENV
from darkroom.core.restart import RestartPolicy
from darkroom.ports import taken_ports

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
# Stopped stage by stage, each after the one before has exited: first what users and tasks
# come through (the worker drains: see darkroom.worker.service), then what those depend on.
STOP_ORDER = (("frontend", "worker"), ("master",), ("storage",), ("database",), ("registry",))
# A server closes its socket at once on SIGTERM; after this long it is killed.
STOP_GRACE_SECONDS = 5.0
# A child that ran this long before dying is restarted at once again, not after a grown backoff.
STABLE_SECONDS = 10.0
# Failed exits in a row, each soon after a start, that make it give up (after 7.5 s of backoff).
GIVE_UP_AFTER = 5

log = logging.getLogger("darkroom.supervisor")


def internal_token(data_dir: Path) -> str:
    """The data directory's service token, made on first use and readable by its owner only."""
    path = data_dir / "internal-token"
    # Atomic, so a crash or a full disk never leaves an empty token (which would turn the
    # checks off); never overwriting, so two first starts agree on one token.
    with contextlib.suppress(FileExistsError):
        write_atomically(path, secrets.token_urlsafe(32), overwrite=False)
    if token := path.read_text().strip():
        return token
    # Empty (left by an older, non-atomic write or by hand): never "no token", a new one.
    log.warning(f"{path} is empty; writing a new internal token")
    write_atomically(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


class Child:
    def __init__(self, role: str, port: int, env: dict[str, str]) -> None:
        self.role, self.port, self._env = role, port, env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = RestartPolicy(
            first=0.5, cap=10.0, stable_seconds=STABLE_SECONDS, give_up_after=GIVE_UP_AFTER
        )
        self.restart_at: float | None = None

    def start(self) -> None:
        self.restarts.started()
        command = [sys.executable, "-m", "darkroom", "serve", self.role, "--port", str(self.port)]
        # Its own process group: a terminal's Ctrl-C goes to the supervisor alone.
        self.process = subprocess.Popen(command, env=self._env, process_group=0)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def wait_ready(self, deadline: float, cancelled: Callable[[], bool]) -> bool:
        while time.monotonic() < deadline and not cancelled():
            if not self.running:
                return False
            try:
                if requests.get(self.url("/readyz"), timeout=1).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return False

    def terminate(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic) for the child to exit, then kill it."""
        if self.process is None:
            return
        try:
            self.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning(f"{self.role} did not stop in time; killed")
            self.process.kill()
            self.process.wait()


class Supervisor:
    def __init__(self, data_dir: Path, ports: dict[str, int], workers: int = 0) -> None:
        self._data_dir = data_dir.resolve()
        make_private_directory(self._data_dir)
        self._ports = ports
        self._config = Config.from_env()
        env = {
            **os.environ,
            "DARKROOM_HOST": HOST,
            "DARKROOM_DATA_DIR": str(self._data_dir),
            "DARKROOM_REGISTRY_ADDRESS": f"{HOST}:{ports['registry']}",
            "DARKROOM_ADVERTISE_ADDRESS": "",
            "DARKROOM_INTERNAL_TOKEN": os.environ.get("DARKROOM_INTERNAL_TOKEN")
            or internal_token(self._data_dir),
            PARENT_PID_ENV: str(os.getpid()),
        }
        if workers:
            env["DARKROOM_CONCURRENCY"] = str(workers)
        # Every role is on this machine: the master and the worker reach the storage's images
        # on its volume themselves (DARKROOM_STORAGE_VOLUME= set empty: through its API).
        env.setdefault("DARKROOM_STORAGE_VOLUME", str(self._data_dir))
        # ... and call the database's task file themselves (DARKROOM_DATABASE_DIRECT=false:
        # through its API).
        env.setdefault("DARKROOM_DATABASE_DIRECT", "true")
        self._children = {role: Child(role, ports[role], env) for role in ROLES}
        self._stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        """Start every role, restart those that die, stop all on SIGINT/SIGTERM; the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        if taken := taken_ports(HOST, self._ports):
            for line in taken:
                log.error(line)
            log.error("darkroom up needs these ports: stop what holds them or pick others")
            return 1
        try:
            if not self._start_all():
                return 0 if self._stopping else 1
            self._announce()
            while not self._stopping:
                if not self._restart_dead():
                    return 1
                time.sleep(0.2)
            return 0
        finally:
            self._stop_all()

    def _start_all(self) -> bool:
        for child in self._children.values():
            child.start()
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            if not child.wait_ready(deadline, cancelled=lambda: self._stopping):
                if not self._stopping:
                    log.error(f"{child.role} did not become ready (see its lines above)")
                return False
        return True

    def _announce(self) -> None:
        children = self._children
        print(
            f"Darkroom is up (data in {self._data_dir}):\n"
            f"  web page  {children['frontend'].url('/')}\n"
            f"  API       {children['master'].url('/openapi.json')}"
            "  (POST /new, GET /status, GET /get)\n"
            f"  registry  {children['registry'].url('/list')}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )

    def _restart_dead(self) -> bool:
        """Restart children that exited, after their backoff; False once one is given up on."""
        now = time.monotonic()
        for child in self._children.values():
            if child.process is None or child.running:
                continue
            if child.restart_at is None:
                code = child.process.returncode
                delay = child.restarts.delay_after_exit(now, failed=code > 0)
                if delay is None:
                    log.error(
                        f"{child.role} exited ({code}) {GIVE_UP_AFTER} times in a row soon after"
                        " starting; giving up"
                    )
                    return False
                log.warning(f"{child.role} exited ({code}); restarting in {delay:g} s")
                child.restart_at = now + delay
            elif now >= child.restart_at:
                child.restart_at = None
                child.start()
        return True

    def _stop_all(self) -> None:
        worker_grace = self._config.drain_seconds + self._config.claim_wait_seconds + 5
        log.info(
            f"stopping: workers finish their tasks or give them back within"
            f" {self._config.drain_seconds:g} s, then the other services stop"
        )
        for stage in STOP_ORDER:
            children = [self._children[role] for role in stage]
            grace = worker_grace if "worker" in stage else STOP_GRACE_SECONDS
            deadline = time.monotonic() + grace
            for child in children:
                child.terminate()
            for child in children:
                child.wait_stopped(deadline)
        log.info("stopped")
