"""Reading request bodies in chunks, never whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

CHUNK_BYTES = 256 * 1024


def iter_chunks(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := stream.read(chunk_bytes):
        yield chunk
