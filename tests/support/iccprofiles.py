"""A small CMYK ICC profile written byte by byte (no CMYK profile ships with Pillow or LittleCMS):
a toy press whose inks darken and tint unlike Pillow's plain CMYK to RGB formula, so a
conversion that ignores the profile is visibly wrong."""

from __future__ import annotations

import itertools
import struct

_D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _description(text: str) -> bytes:
    ascii_text = text.encode() + b"\x00"
    # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts.
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(8 + 3 + 67)


def _toy_press_lab(c: float, m: float, y: float, k: float) -> tuple[float, float, float]:
    lightness = 95 - 40 * c - 25 * m - 10 * y - 80 * k + 20 * c * k
    return max(0.0, min(100.0, lightness)), -30 * c + 60 * m - 5 * y, -40 * c - 5 * m + 70 * y


def _cmyk_to_lab_table(grid: int = 3) -> bytes:
    """An A2B0 lut16Type (mft2): identity curves around a grid of Lab values."""
    table = b"mft2" + bytes(4) + bytes([4, 3, grid, 0])
    table += b"".join(_s15(1.0 if row == col else 0.0) for row in range(3) for col in range(3))
    table += struct.pack(">HH", 2, 2) + struct.pack(">8H", *[0, 65535] * 4)
    steps = [index / (grid - 1) for index in range(grid)]
    for inks in itertools.product(steps, repeat=4):
        lightness, a, b = _toy_press_lab(*inks)
        table += struct.pack(
            ">3H", round(lightness * 0xFF00 / 100), round((a + 128) * 256), round((b + 128) * 256)
        )
    return table + struct.pack(">6H", *[0, 65535] * 3)


def toy_cmyk_profile() -> bytes:
    """An ICC v2 output profile from CMYK to Lab."""
    tags = [
        (b"desc", _description("toy CMYK press")),
        (b"wtpt", _xyz(*_D50)),
        (b"cprt", b"text" + bytes(4) + b"public domain\x00"),
        (b"A2B0", _cmyk_to_lab_table()),
    ]
    offset = 128 + 4 + 12 * len(tags)
    directory, data = b"", b""
    for signature, body in tags:
        data += bytes(-(offset + len(data)) % 4)  # each tag starts on a 4-byte boundary
        directory += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + directory + data
    header = (
        struct.pack(">I", 128 + len(body))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"prtrCMYKLab "
        + bytes(12)  # date
        + b"acspAPPL"
        + bytes(4 + 4 + 4 + 8 + 4)  # flags, manufacturer, model, attributes, intent
        + b"".join(_s15(value) for value in _D50)
        + bytes(4 + 16 + 28)  # creator, profile id, reserved
    )
    return header + body
