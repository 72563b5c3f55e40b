"""Test images and the results Darkroom must produce from them: the harness's, by their old name,
and a decompression bomb only the tests need.

The shared ones live in ``harness/images.py`` because the chaos run there checks results with them.
"""

import zlib

from harness.images import decode, encode, noise_png, png_bytes, same_pixels, swapped

__all__ = ["decode", "encode", "noise_png", "png_bomb", "png_bytes", "same_pixels", "swapped"]


def png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of zeros: tiny on disk, width * height bytes once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    packer, row = zlib.compressobj(9), bytes(width + 1)  # row by row: no image-sized buffer
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
