"""Reading request bodies in chunks, never whole; long-lived response streams, bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

import falcon

CHUNK_BYTES = 256 * 1024


def client_departed(req: falcon.Request) -> Callable[[], bool]:
    """Whether ``req``'s client has closed its connection, asked at any time (waitress sees it
    at once, reading ahead: ``core.server.REQUEST_LOOKAHEAD``; other servers: never)."""
    return req.env.get("waitress.client_disconnected") or _never


def _never() -> bool:
    return False


def iter_chunks(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := stream.read(chunk_bytes):
        yield chunk


class StreamSlots:
    """At most ``limit`` long-lived response streams at once (an event stream holds a server
    thread for minutes): over it, 503 with Retry-After."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(max(limit, 1))

    def take(self) -> None:
        """Take a slot, or raise 503; give it back with ``release`` or through ``body``."""
        if not self._slots.acquire(blocking=False):
            raise falcon.HTTPServiceUnavailable(
                title="Too many event streams",
                description="Every event stream slot is taken; connect again shortly.",
                headers={"Retry-After": "1"},
            )

    def release(self) -> None:
        self._slots.release()

    def body(self, chunks: Iterator[bytes]) -> ClosingBody:
        """``chunks`` as a response body that gives the slot back when it is closed."""
        return ClosingBody(chunks, self.release)


class ClosingBody:
    """Chunks as a response body: the server calls ``close`` when the body ends, or when its
    client went away (even before the first chunk); that closes the chunks, then runs
    ``on_close``, once."""

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            try:
                if (close_chunks := getattr(self._chunks, "close", None)) is not None:
                    close_chunks()
            finally:
                on_close()
