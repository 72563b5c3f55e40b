"""The environment and command lines the services start with, one recipe for every launcher."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# This checkout's code, which the children run unless told to run another copy.
SERVICES = Path(__file__).resolve().parents[1] / "services"
# Every role, in start order; tests/test_harness.py checks it against darkroom's own table.
ROLES = ("registry", "database", "storage", "master", "worker", "frontend")


def settings_env(settings: Mapping[str, str]) -> dict[str, str]:
    """``{"lease_seconds": "3"}`` as the variables Config reads: ``DARKROOM_LEASE_SECONDS``."""
    return {f"DARKROOM_{name.upper()}": value for name, value in settings.items()}


def service_env(
    services_dir: Path = SERVICES, token: str | None = None, **settings: str
) -> dict[str, str]:
    """This process's environment with ``services_dir`` first on PYTHONPATH, so ``python -m
    darkroom`` runs that copy whatever pip installed, plus the internal token and settings."""
    python_path = [str(services_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    if token is not None:
        env["DARKROOM_INTERNAL_TOKEN"] = token
    return {**env, **settings_env(settings)}


def serve_command(role: str, port: int) -> list[str]:
    return [sys.executable, "-m", "darkroom", "serve", role, "--port", str(port)]


def up_command(
    data_dir: Path, ports: Mapping[str, int], workers: int, extra: Iterable[str] = ()
) -> list[str]:
    role_ports = [arg for role in ROLES for arg in (f"--{role}-port", str(ports[role]))]
    command = [sys.executable, "-m", "darkroom", "up", "--data-dir", str(data_dir)]
    return [*command, "--workers", str(workers), *role_ports, *extra]
