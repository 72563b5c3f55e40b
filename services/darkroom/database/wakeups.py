"""Wake-ups between the processes that share one SQLite task file, as PostgreSQL's NOTIFY does
between replicas: after a commit, a datagram to every other process's socket says which tasks
changed, whether one became claimable and whether one ended.

The sockets are Unix datagram sockets in a private folder beside the file, one per open store
(named ``PID-RANDOM``); a sender finds the others by listing the folder (again only when the
folder changes) and removes a socket whose process has gone. Sends never block: a receiver
whose queue is full misses the datagram, and the long polls' half-second ticks notice the
change instead, only later (as after a PostgreSQL listener's reconnection). What must not be
missed, the feed of ended tasks, is read from the file itself (``SqliteTaskStore``): a
datagram only says when to look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

from darkroom.core.atomicfile import make_private_directory

log = logging.getLogger(__name__)

# A message: flags, then the changed task ids, space-separated (ids have no space: 22
# characters of A-Z a-z 0-9 _ -); a bulk change (every task) is sent as "*".
_CLAIMABLE, _ENDED, _ALL = "q", "e", "*"
MAX_IDS_PER_MESSAGE = 100
TICK_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Wakeup:
    """What a commit in another process changed: ``tasks`` None means any task."""

    tasks: frozenset[str] | None
    claimable: bool
    ended: bool

    def merged(self, other: Wakeup) -> Wakeup:
        tasks = None if self.tasks is None or other.tasks is None else self.tasks | other.tasks
        return Wakeup(tasks, self.claimable or other.claimable, self.ended or other.ended)


class Wakeups:
    """This process's socket in ``folder``, and the sends to every other one.

    ``on_wakeup`` is called on a thread of its own for each datagram received, and with None
    every TICK_SECONDS without one (so a missed datagram delays a reader, never loses it). A
    bound method is held weakly: once its object is gone (a store dropped unclosed), the
    thread closes the socket and ends.
    """

    def __init__(self, folder: Path, on_wakeup: Callable[[Wakeup | None], None]) -> None:
        make_private_directory(folder)
        self._folder = folder
        # Socket addresses are at most 107 bytes: name them through a descriptor of the folder.
        self._folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self._address(self._name))
        self._socket.settimeout(TICK_SECONDS)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._send_lock = threading.Lock()
        self._peers: list[str] = []
        self._listed_at: int | None = None  # the folder's mtime when it was last listed
        self._on_wakeup: Callable[[], Callable[[Wakeup | None], None] | None] = (
            weakref.WeakMethod(on_wakeup) if inspect.ismethod(on_wakeup) else lambda: on_wakeup
        )
        self._closed = threading.Event()
        self.unsent = 0  # datagrams a full queue refused (counted for a look in a profile)
        self._remove_dead_peers()
        self._thread = threading.Thread(target=self._receive, name="task-wakeups", daemon=True)
        self._thread.start()

    def _address(self, name: str) -> str:
        return f"/proc/self/fd/{self._folder_fd}/{name}"

    # -- sending ------------------------------------------------------------------------
    def publish(
        self, tasks: Iterable[str] | None, *, claimable: bool = False, ended: bool = False
    ) -> None:
        """Tell every other process: ``tasks`` changed (None: any task; empty: none)."""
        flags = (_CLAIMABLE if claimable else "") + (_ENDED if ended else "")
        ids = [_ALL] if tasks is None else list(tasks)
        if not ids and not flags:
            return
        with self._send_lock:
            if self._closed.is_set():
                return
            peers = self._current_peers()
            for start in range(0, max(len(ids), 1), MAX_IDS_PER_MESSAGE):
                message = " ".join([flags, *ids[start : start + MAX_IDS_PER_MESSAGE]]).encode()
                for peer in peers:
                    self._send(peer, message)

    def _current_peers(self) -> list[str]:
        """The other sockets in the folder, listed again only when it changed."""
        changed_at = os.stat(self._folder).st_mtime_ns
        if changed_at != self._listed_at:
            self._listed_at = changed_at
            self._peers = [name for name in os.listdir(self._folder) if name != self._name]
        return self._peers

    def _remove_dead_peers(self) -> None:
        """Remove the sockets that processes killed since the last send left behind (an empty
        datagram: a live process ignores it), so that none outlives its system's stop."""
        for peer in os.listdir(self._folder):
            if peer != self._name:
                self._send(peer, b"")

    def _send(self, peer: str, message: bytes) -> None:
        try:
            self._sender.sendto(message, self._address(peer))
        except BlockingIOError:
            self.unsent += 1  # its queue is full: its tick notices the change
        except (ConnectionRefusedError, FileNotFoundError):
            # Its process has gone (a crash leaves the socket behind): no one to tell.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address(peer))
        except OSError as exc:
            log.debug("task wake-up not sent", extra={"peer": peer, "error": str(exc)})

    # -- receiving ----------------------------------------------------------------------
    def _receive(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    message: bytes | None = self._socket.recv(65536)
                except TimeoutError:
                    message = None
                if message == b"" or self._closed.is_set():
                    continue  # a dead-peer probe, or the close's own wake
                wakeup = None if message is None else self._with_queued(_parsed(message))
                if not self._deliver(wakeup):
                    self._shut()  # its store is gone, never closed
        finally:
            self._socket.close()

    def _with_queued(self, wakeup: Wakeup) -> Wakeup:
        """``wakeup`` merged with every datagram already queued behind it: one call for a burst,
        so the queue (10 datagrams: net.unix.max_dgram_qlen) is emptied as fast as it fills."""
        self._socket.setblocking(False)  # this thread alone receives on it
        try:
            while True:
                try:
                    message = self._socket.recv(65536)
                except BlockingIOError:
                    return wakeup
                if message:
                    wakeup = wakeup.merged(_parsed(message))
        finally:
            self._socket.settimeout(TICK_SECONDS)

    def _deliver(self, wakeup: Wakeup | None) -> bool:
        """Call ``on_wakeup``; False once its object is gone."""
        on_wakeup = self._on_wakeup()
        if on_wakeup is None:
            return False
        try:
            on_wakeup(wakeup)
        except Exception:  # a store being closed, or a bug: the next wake-up tries again
            if not self._closed.is_set():
                log.exception("task wake-up failed")
        return True

    def close(self) -> None:
        """Stop receiving and remove this process's socket; closing again does nothing."""
        self._shut()
        self._thread.join(2 * TICK_SECONDS)

    def _shut(self) -> None:
        """Remove this process's socket (and those of dead ones) and stop sending; the receiver
        thread, woken, closes the socket itself. The folder's descriptor is closed here, under
        the lock every send takes: the receiver may end at any moment meanwhile."""
        with self._send_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            with contextlib.suppress(OSError):
                self._sender.sendto(b"", self._address(self._name))  # ends the wait in recv
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address(self._name))
            self._remove_dead_peers()
            self._sender.close()
            os.close(self._folder_fd)


def _parsed(message: bytes) -> Wakeup:
    flags, *ids = message.decode("ascii", "replace").split(" ")
    tasks = None if _ALL in ids else frozenset(ids)
    return Wakeup(tasks, _CLAIMABLE in flags, _ENDED in flags)
