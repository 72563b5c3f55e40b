"""Which of the ports ``darkroom up`` needs are taken already, and by which process."""

from __future__ import annotations

import errno
import shlex
import socket

import psutil


def is_taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails as waitress's would (it sets SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def holder(port: int) -> str:
    """``pid 123 (python -m http.server 3003)`` for the process listening on ``port``, if visible.

    Processes of other users are not visible without privileges: then only "another process".
    """
    try:
        listening = [
            conn.pid
            for conn in psutil.net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
        ]
        pid = next((pid for pid in listening if pid is not None), None)
        if pid is None:
            return "another process (not visible to this user)"
        command = shlex.join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "another process (not visible to this user)"
    return f"pid {pid} ({command})"


def taken_ports(host: str, ports: dict[str, int]) -> list[str]:
    """One line per taken port: ``port 3003 (master) is taken by pid 123 (...)``."""
    return [
        f"port {port} ({role}) is taken by {holder(port)}"
        for role, port in ports.items()
        if is_taken(host, port)
    ]
