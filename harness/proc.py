"""What ``/proc`` says of a process: CPU seconds, memory, children, command line (via psutil).

Every function answers for a process that is gone (0, empty, False) rather than raising: the
processes measured are the ones chaos and benchmarks kill.
"""

from __future__ import annotations

from pathlib import Path

import psutil

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def cpu_seconds(pid: int, kernel_only: bool = False) -> float:
    """User and system CPU seconds of a process, or with ``kernel_only`` its system seconds
    (the kernel's work for it: copies through sockets and files, fsync); 0 once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except GONE:
        return 0.0
    return times.system if kernel_only else times.user + times.system


def children(parent: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(parent).children()]
    except GONE:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children, e.g. a server and the processes it forked."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def command_line(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except GONE:
        return []


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS, which psutil does not give) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def identity(pid: int) -> psutil.Process | None:
    """The process now running as ``pid``: ``is_running()`` stays False once it is gone, even
    when the pid is reused."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except GONE:
        return None


def alive(process: psutil.Process) -> bool:
    """Whether that very process (not another with its pid) is still running."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
