"""Start a command, wait until it is ready, stop it: the processes benchmarks and tests run."""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import requests

HOST = "127.0.0.1"
T = TypeVar("T")


class Timeout(AssertionError, RuntimeError):
    """A wait ran out of time, or the process waited for exited: a failed assertion to pytest."""


# Linux's default range of the local ports outgoing connections get (net.ipv4.ip_local_port_range).
EPHEMERAL_PORTS = (32768, 60999)
# How many ports below that range free_port picks from.
PORTS_BELOW_EPHEMERAL = 12_000


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_PORTS
    return low, high


def free_port() -> int:
    """A port nothing listens on, for a server started next, from below the ephemeral range.

    A port from ``bind(0)`` is an ephemeral one, which the OS also hands to outgoing
    connections: a client connecting before the server bound it took it once (EADDRINUSE, a
    role that never started). Below the range only another listener can take it. Each is
    handed out once per process (in a shuffled order), so two asked for in a row differ.
    """
    for _ in range(PORTS_BELOW_EPHEMERAL):
        port = next(_PORTS, None)
        if port is None:  # no room below the range
            break
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every one is taken: any free port
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _shuffled_ports() -> Iterator[int]:
    low, _ = ephemeral_ports()
    ports = list(range(max(1024, low - PORTS_BELOW_EPHEMERAL), low))
    random.shuffle(ports)
    return itertools.cycle(ports)


_PORTS = _shuffled_ports()


def wait_until(
    predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise Timeout after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    raise Timeout(f"timed out after {timeout} s: {message}")


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers a GET with 200."""
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal the process ``pid`` (by default kill it); False when there is none."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class Launched:
    """``command`` running in the background, its stdout and stderr appended to ``log_path``.

    ``new_session`` makes it the leader of a process group of its own (its pid is the group's
    id), for a server that forks children its own SIGTERM handling leaves behind.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(command),
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, ready: Callable[[], object], timeout: float, interval: float) -> None:
        """Poll ``ready`` until it is truthy; Timeout when the process exits first, or late."""

        def check() -> object:
            if self.process.poll() is not None:
                raise Timeout(f"{self.name} exited: see {self.log_path}")
            return ready()

        wait_until(check, timeout, f"{self.name} ready (see {self.log_path})", interval)

    def wait_for_url(self, url: str, timeout: float, interval: float = 0.05) -> None:
        """Until ``url`` answers 200."""
        self.wait_ready(lambda: answers(url), timeout, interval)

    def wait_for_log(self, text: str, timeout: float, interval: float = 0.1) -> None:
        """Until ``text`` appears in the log."""

        def logged() -> bool:
            return text in self.log_path.read_text(errors="replace")

        self.wait_ready(logged, timeout, interval)

    def stop(
        self,
        timeout: float,
        sig: int = signal.SIGTERM,
        before_kill: Callable[[], object] | None = None,
    ) -> int:
        """Send ``sig`` (nothing if it has exited), SIGKILL after ``timeout`` s; the exit code.

        ``before_kill`` runs first when it comes to SIGKILL, e.g. to kill what the process
        started and would otherwise leave behind.
        """
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            if before_kill is not None:
                before_kill()
            self.process.kill()
            return self.process.wait()
