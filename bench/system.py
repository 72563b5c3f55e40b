"""``darkroom up`` and a lone database as the benchmark runs them, on the harness."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import requests

from harness.environment import serve_command, service_env
from harness.launch import HOST, Launched, Timeout, free_port, wait_until
from harness.metrics import samples, total
from harness.up import DarkroomUp

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class BenchedUp(DarkroomUp):
    """``darkroom up`` in a folder of its own under ``work_dir``, running ``services_dir``;
    ``env`` adds DARKROOM_* variables for every role."""

    def __init__(self, services_dir: Path, work_dir: Path, workers: int, env: dict[str, str]):
        data_dir = work_dir / f"data-{workers}w-{secrets.token_hex(3)}"
        super().__init__(data_dir, work_dir / f"darkroom-up-{workers}w.log", workers, services_dir)
        self.env.update(env)

    def start(self) -> None:
        self.launch().wait_for_log("Darkroom is up", START_TIMEOUT)

    def wait_workers_idle(self, timeout: float = 30.0) -> None:
        """Until every task loop is running (and so waiting for work), or ``timeout``: a copy
        of the code without the metric (``--services``) is measured anyway."""

        def idle() -> bool:
            try:
                text = self.session.get(self.url("worker", "/metrics"), timeout=5).text
            except requests.RequestException:
                return False
            return total(samples(text), "darkroom_worker_loops") >= self.workers

        with contextlib.suppress(Timeout):
            wait_until(idle, timeout, "the worker's loops running", interval=0.1)

    def __enter__(self) -> BenchedUp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(STOP_TIMEOUT)

    def worker_loop_pids(self) -> list[int]:
        """The worker's loop processes (in thread mode the loops are the worker process)."""
        return self.loop_pids() or [self.role_pids()["worker"]]


class StandaloneDatabase:
    """``darkroom serve database`` alone, so no worker claims the benchmark's tasks.

    Its registry address points at a closed port: registering fails quietly in the background.
    """

    def __init__(
        self,
        services_dir: Path,
        work_dir: Path,
        database_url: str = "",
        name: str = "database-alone",
        token: str | None = None,
    ) -> None:
        self.port = free_port()
        self.token = token or secrets.token_urlsafe(24)
        self.log_path = work_dir / f"{name}.log"
        self.env = service_env(
            services_dir,
            self.token,
            host=HOST,
            data_dir=str(work_dir / name),
            database_url=database_url,  # empty: SQLite in the data directory
            registry_address=f"{HOST}:{free_port()}",
        )
        self.launched: Launched | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> StandaloneDatabase:
        command = serve_command("database", self.port)
        self.launched = Launched("database", command, self.env, self.log_path)
        self.launched.wait_for_url(f"{self.url}/healthz", START_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.launched is not None:
            self.launched.stop(STOP_TIMEOUT)
