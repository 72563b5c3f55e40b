"""Darkroom on PostgreSQL with every role but the registry started twice: two "halves" that
share one PostgreSQL database and one storage data directory, as replicas would in a cluster.

Discovery holds one address per role, so each half has a registry of its own: half A's master
and worker reach half A's database and storage, half B's reach B's. Nothing else is shared
but the database and the files, so a job uploaded through A may be claimed, processed and
stored through B and downloaded through A again: the replicas must agree through PostgreSQL and
the shared directory alone. ``kill`` and ``restart`` play Kubernetes for the chaos test.
"""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

from harness.environment import serve_command, service_env
from harness.launch import HOST, Launched, free_port

HALVES = ("a", "b")
ROLES = ("registry", "database", "storage", "master", "worker")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ReplicatedDarkroom:
    """Both halves as ``darkroom serve`` processes; ``url(role)`` is half A's unless told."""

    def __init__(self, database_url: str, data_dir: Path, log_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir  # the shared one: the storage replicas' images
        self.log_dir = log_dir
        self.token = secrets.token_urlsafe(24)
        self.ports = {(half, role): free_port() for half in HALVES for role in ROLES}
        self.processes: dict[tuple[str, str], Launched] = {}
        self._env = {
            half: service_env(
                token=self.token,
                host=HOST,
                data_dir=str(data_dir),
                database_url=database_url,
                registry_address=f"{HOST}:{self.ports[half, 'registry']}",
                discovery_ttl_seconds="1",
                **settings,
            )
            for half in HALVES
        }

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def url(self, role: str, path: str = "", half: str = "a") -> str:
        return f"http://{HOST}:{self.ports[half, role]}{path}"

    def start(self, half: str, role: str) -> None:
        env = dict(self._env[half])
        if role == "registry":  # its registry.json apart from the other half's
            env["DARKROOM_DATA_DIR"] = str(self.log_dir / f"registry-{half}")
        log_path = self.log_dir / f"{role}-{half}.log"
        command = serve_command(role, self.ports[half, role])
        launched = Launched(f"{role} {half}", command, env, log_path)
        self.processes[half, role] = launched
        launched.wait_for_url(self.url(role, "/readyz", half), START_TIMEOUT)

    def start_all(self) -> None:
        for role in ROLES:
            for half in HALVES:
                self.start(half, role)

    def kill(self, half: str, role: str, sig: int = signal.SIGKILL) -> None:
        self.processes.pop((half, role)).stop(STOP_TIMEOUT, sig)

    def restart(self, half: str, role: str, sig: int = signal.SIGKILL) -> None:
        self.kill(half, role, sig)
        self.start(half, role)

    def stop_all(self) -> None:
        for half, role in reversed(list(self.processes)):
            self.kill(half, role, signal.SIGTERM)
