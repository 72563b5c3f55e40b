"""A child process stops when its parent dies, even by SIGKILL: no orphan keeps serving.

On Linux the kernel sends the signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread watches
the parent id. Either way the child gets SIGTERM, so it stops as it would when asked to: a
worker gives back its task, a server closes its socket.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PARENT_PID_ENV = "DARKROOM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process once ``parent_pid``, its parent, is gone (at once if it already is)."""
    if not _ask_kernel(signal.SIGTERM):
        threading.Thread(
            target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch"
        ).start()
    if os.getppid() != parent_pid:  # died before the request above was made
        os.kill(os.getpid(), signal.SIGTERM)


def stop_with_parent_from_env() -> None:
    """``stop_with_parent`` for the parent named in DARKROOM_PARENT_PID, when it is set."""
    if parent := os.environ.get(PARENT_PID_ENV):
        stop_with_parent(int(parent))


def _ask_kernel(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
