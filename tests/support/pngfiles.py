"""PNG files written byte by byte, for the depths and chunks Pillow does not write itself
(2- and 4-bit grey, 16-bit colour, tRNS on grey, malformed optional chunks)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # samples per pixel, by PNG colour type
GREY, RGB, GREY_ALPHA, RGBA = 0, 2, 4, 6


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _packed(samples: Sequence[int], bits: int) -> bytes:
    if bits == 16:
        return struct.pack(f">{len(samples)}H", *samples)
    if bits == 8:
        return bytes(samples)
    packed, pending, filled = bytearray(), 0, 0
    for sample in samples:
        pending, filled = (pending << bits) | sample, filled + bits
        if filled == 8:
            packed.append(pending)
            pending, filled = 0, 0
    if filled:
        packed.append(pending << (8 - filled))
    return bytes(packed)


def png(
    rows: Sequence[Sequence[int]],
    bits: int,
    colour_type: int,
    before_data: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A PNG of ``rows`` of samples (interleaved channels), with extra chunks before IDAT."""
    width = len(rows[0]) // CHANNELS[colour_type]
    header = struct.pack(">IIBBBBB", width, len(rows), bits, colour_type, 0, 0, 0)
    data = b"".join(b"\x00" + _packed(row, bits) for row in rows)  # filter type 0 per row
    extra = b"".join(chunk(kind, body) for kind, body in before_data)
    return (
        SIGNATURE
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


def trns(*key: int) -> tuple[bytes, bytes]:
    """A tRNS chunk giving a key colour (one grey sample, or red, green and blue)."""
    return b"tRNS", struct.pack(f">{len(key)}H", *key)
