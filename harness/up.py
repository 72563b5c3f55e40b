"""``darkroom up`` started with free ports and a token of its own, and the processes it runs."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path

import requests

from harness.environment import ROLES, SERVICES, service_env, up_command
from harness.launch import HOST, Launched, free_port, kill
from harness.proc import children, command_line, cpu_seconds


class DarkroomUp:
    """One ``darkroom up`` process tree; ``settings`` are DARKROOM_* settings for every role
    (``lease_seconds="2"``), ``services_dir`` the copy of the code it runs."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        workers: int,
        services_dir: Path = SERVICES,
        **settings: str,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.workers = workers
        self.ports = {role: free_port() for role in ROLES}
        self.token = secrets.token_urlsafe(24)
        self.env = service_env(services_dir, self.token, **settings)
        self.launched: Launched | None = None
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers.update(self.auth)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def url(self, role: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[role]}{path}"

    def launch(self, extra: Iterable[str] = ()) -> Launched:
        """Start it (without waiting): ``wait_for_log("Darkroom is up", ...)`` on the result."""
        command = up_command(self.data_dir, self.ports, self.workers, extra)
        self.launched = Launched("darkroom up", command, self.env, self.log_path)
        return self.launched

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL to it and its roles after ``timeout`` s."""
        if self.launched is not None:
            self.launched.stop(timeout, before_kill=self._kill_roles)

    def _kill_roles(self) -> None:
        for pid in self.role_pids().values():
            kill(pid)

    def role_pids(self) -> dict[str, int]:
        """Each role's ``darkroom serve`` process: the children of ``darkroom up``."""
        if self.launched is None:
            return {}
        pids: dict[str, int] = {}
        for pid in children(self.launched.pid):
            command = command_line(pid)
            if "serve" in command[:-1]:
                pids[command[command.index("serve") + 1]] = pid
        return pids

    def loop_pids(self) -> list[int]:
        """The worker's task loop processes (none in thread mode, or while it is down)."""
        worker = self.role_pids().get("worker")
        if worker is None:
            return []
        return [pid for pid in children(worker) if _spawned(command_line(pid))]

    def cpu_seconds(self, kernel_only: bool = False) -> dict[str, float]:
        """CPU time used so far by each role's process and its children (the worker's loops);
        with ``kernel_only``, the system time of it only."""
        pids = self.role_pids()
        found = {role: cpu_seconds(pid, kernel_only) for role, pid in pids.items()}
        if "worker" in pids:
            loops = children(pids["worker"])
            found["worker"] += sum(cpu_seconds(pid, kernel_only) for pid in loops)
        return found


def _spawned(command: list[str]) -> bool:
    """A multiprocessing child (a loop), not its resource tracker."""
    return any("spawn_main" in part for part in command)
