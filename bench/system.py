"""``darkroom up`` started by the benchmark: free ports, a temporary data folder, child pids."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import requests

from launch import HOST, Launched, free_port, kill

ROLES = ("registry", "database", "storage", "master", "worker", "frontend")
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


class DarkroomUp:
    """One ``darkroom up`` process tree; ``env`` adds DARKROOM_* settings for every role."""

    def __init__(self, services_dir: Path, work_dir: Path, workers: int, env: dict[str, str]):
        self.workers = workers
        self.data_dir = work_dir / f"data-{workers}w-{secrets.token_hex(3)}"
        self.log_path = work_dir / f"darkroom-up-{workers}w.log"
        self.ports = {role: free_port() for role in ROLES}
        self.token = secrets.token_urlsafe(24)
        self.env = {
            **os.environ,
            # the checkout under test, not whatever darkroom is installed
            "PYTHONPATH": os.pathsep.join(
                [str(services_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "DARKROOM_INTERNAL_TOKEN": self.token,
            **env,
        }
        self.launched: Launched | None = None
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def url(self, role: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[role]}{path}"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "darkroom",
            "up",
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            *[arg for role in ROLES for arg in (f"--{role}-port", str(self.ports[role]))],
        ]
        self.launched = Launched("darkroom up", command, self.env, self.log_path)
        self.launched.wait_for_log("Darkroom is up", START_TIMEOUT)

    def wait_workers_idle(self, timeout: float = 30.0) -> None:
        """Until every task loop is running (and so waiting for work)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = self.session.get(self.url("worker", "/metrics"), timeout=5).text
                if _sample(text, "darkroom_worker_loops") >= self.workers:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        if self.launched is not None:
            self.launched.stop(STOP_TIMEOUT, before_kill=self._kill_children)

    def _kill_children(self) -> None:
        for pid in self.child_pids().values():
            kill(pid)

    def __enter__(self) -> DarkroomUp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def child_pids(self) -> dict[str, int]:
        """Each role's ``darkroom serve`` process: children of ``darkroom up``, from /proc."""
        assert self.launched is not None
        pids: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.launched.pid and b"serve" in cmdline:
                role = cmdline[cmdline.index(b"serve") + 1].decode()
                pids[role] = int(entry.name)
        return pids

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each role's process and its children (the worker's loops)."""
        found = {role: cpu_seconds(pid) for role, pid in self.child_pids().items()}
        worker = self.child_pids().get("worker")
        if worker is not None:
            found["worker"] += sum(cpu_seconds(pid) for pid in children(worker))
        return found

    def worker_loop_pids(self) -> list[int]:
        """The worker's loop processes (in thread mode the loops are the worker process)."""
        worker = self.child_pids()["worker"]
        return children(worker) or [worker]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children, e.g. a server and the processes it forked."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def _sample(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class StandaloneDatabase:
    """``darkroom serve database`` alone, so no worker claims the benchmark's tasks.

    Its registry address points at a closed port: registering fails quietly in the background.
    """

    def __init__(self, services_dir: Path, work_dir: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.log_path = work_dir / "database-alone.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(services_dir),
            "DARKROOM_HOST": HOST,
            "DARKROOM_DATA_DIR": str(work_dir / "database-alone"),
            "DARKROOM_REGISTRY_ADDRESS": f"{HOST}:{free_port()}",
            "DARKROOM_INTERNAL_TOKEN": self.token,
        }
        self.launched: Launched | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> StandaloneDatabase:
        command = [sys.executable, "-m", "darkroom", "serve", "database", "--port", str(self.port)]
        self.launched = Launched("database", command, self.env, self.log_path)
        self.launched.wait_for_url(f"{self.url}/healthz", START_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.launched is not None:
            self.launched.stop(STOP_TIMEOUT)
