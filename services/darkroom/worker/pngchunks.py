"""PNG chunks: optional ones that cannot be read are skipped; a broken file says what is wrong.

Pillow refuses a whole PNG when an optional (ancillary) chunk is malformed, for example an
``iCCP`` chunk with an unknown compression method, or when such a chunk fails its CRC, although
the PNG specification lets a decoder ignore such a chunk (libpng, and so browsers and libvips,
warn and discard it). ``TolerantPngStream`` skips it and notes why; ``find_png_fault`` walks a PNG
that failed to decode chunk by chunk and names the first fault (bad signature, truncated, bad
CRC), which Pillow's own messages often do not. ``TolerantPngImageFile`` reads a file cut off
after its image data, in a chunk before IEND, as libpng does: the pixels are all there.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from PIL import Image, PngImagePlugin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Failures of Pillow's chunk readers on malformed content. Not EOFError (the end of the chunks)
# nor OSError (a short read: a truncated file is an error, not an optional chunk to skip).
_UNREADABLE = (SyntaxError, ValueError, TypeError, IndexError, struct.error, zlib.error)
_READ_STEP = 1 << 20  # CRCs are checked a megabyte at a time, whatever a chunk's length
# An APNG frame's pixels: checked by nobody before they are decoded, as IDAT is not either.
_UNCHECKED = (b"fdAT",)
# An APNG's chunks, optional to a still image; while frames are read their faults are the
# animation's (see ``TolerantPngStream.animating``).
_ANIMATION = (b"acTL", b"fcTL", b"fdAT")


class TolerantPngStream(PngImagePlugin.PngStream):
    """Pillow's PNG chunk reader, skipping ancillary chunks it cannot read; see ``skipped``."""

    def __init__(self, fp: BinaryIO) -> None:
        super().__init__(fp)
        self.skipped: list[str] = []  # one line per chunk skipped, fit to show a user
        self._bad_crc_read = False  # the chunk just skipped failed its CRC: crc() lets it be
        # Set while an APNG's frames are read: a fault in its animation chunks then propagates,
        # and the animation gives way to the still image (``codec.AnimationUnreadable``).
        self.animating = False
        self.last_chunk = ""  # the name of the chunk read last, for a note about it

    def read(self) -> tuple[bytes, int, int]:
        cid, pos, length = super().read()
        self.last_chunk = cid.decode("ascii", "replace")
        return cid, pos, length

    def call(self, cid: bytes, pos: int, length: int) -> bytes:
        if not _is_ancillary(cid):
            return super().call(cid, pos, length)
        name = cid.decode("ascii", "replace")
        assert self.fp is not None
        if cid not in _UNCHECKED and _crc_fails(self.fp, cid, pos, length):
            # Checked before its handler runs: what a bad chunk says must not be used either.
            self.skipped.append(f"skipped the optional {name} chunk: bad CRC")
            self._bad_crc_read = True
            return PngImagePlugin.ImageFile._safe_read(self.fp, length)
        if self.animating and cid in _ANIMATION:
            return super().call(cid, pos, length)
        try:
            return super().call(cid, pos, length)
        except _UNREADABLE as exc:
            self.skipped.append(f"skipped the unreadable optional {name} chunk: {exc}")
            self.fp.seek(pos)  # the caller checks the chunk's CRC over its data
            return PngImagePlugin.ImageFile._safe_read(self.fp, length)

    def crc(self, cid: bytes, data: bytes) -> None:
        if self._bad_crc_read:
            self._bad_crc_read = False
            self.crc_skip(cid, data)  # reads the stored CRC, known to be wrong
            return
        super().crc(cid, data)


def _is_ancillary(cid: bytes) -> bool:
    # Bit 5 of the first letter (lower case) marks a chunk a decoder may ignore.
    return len(cid) == 4 and bool(cid[0] & 0x20)


def _crc_fails(fp: BinaryIO, cid: bytes, pos: int, length: int) -> bool:
    """Whether the chunk whose data starts at ``pos`` has a wrong CRC; ``fp`` is left at ``pos``.
    A chunk cut short is not said to fail here: reading it fails as a truncated file."""
    computed, stored = _read_chunk_crcs(fp, cid, length)
    fp.seek(pos)
    return computed is not None and stored is not None and computed != stored


def _read_chunk_crcs(fp: BinaryIO, cid: bytes, length: int) -> tuple[int | None, int | None]:
    """Read a chunk's data and CRC from where ``fp`` is: (the CRC of what was read, the CRC
    stored), each None where the file ends before it."""
    crc = zlib.crc32(cid)
    remaining = length
    while remaining:
        data = fp.read(min(remaining, _READ_STEP))
        if not data:
            return None, None
        crc = zlib.crc32(data, crc)
        remaining -= len(data)
    stored = fp.read(4)
    return crc, struct.unpack(">I", stored)[0] if len(stored) == 4 else None


class TolerantPngImageFile(PngImagePlugin.PngImageFile):
    """Pillow's PNG image, whose still image survives a file cut off after its image data."""

    def load_end(self) -> None:
        """Read the chunks after the image data. A file that ends inside one of them (a
        download or a write cut short) still has every pixel: the chunk is noted and left out,
        as libpng and libvips do, where Pillow refuses the whole image."""
        stream = self.png
        try:
            super().load_end()
        except OSError:  # Pillow's short read ("Truncated File Read")
            # An APNG's next frame is read on from here: its fault is the animation's.
            if self.is_animated or not isinstance(stream, TolerantPngStream):
                raise
            stream.skipped.append(
                f"skipped the {stream.last_chunk} chunk cut off by the end of the file, after"
                " the image data"
            )
            self._text = stream.im_text
            stream.close()
            self.png = None


def use_tolerant_png_reader() -> None:
    """Make Pillow read PNGs with ``TolerantPngImageFile`` and ``TolerantPngStream`` (its
    PngImageFile looks the stream's name up)."""
    PngImagePlugin.PngStream = TolerantPngStream  # type: ignore[misc]
    Image.register_open(TolerantPngImageFile.format, TolerantPngImageFile, PngImagePlugin._accept)


def find_png_fault(source: BinaryIO) -> str | None:
    """What is wrong with the PNG in ``source`` (read from where it is), or None if its chunks
    are sound: "bad signature", "bad header …", "truncated …", "bad CRC in the … chunk"."""
    if source.read(8) != PNG_SIGNATURE:
        return "bad signature"
    first = True
    while True:
        head = source.read(8)
        if len(head) < 8:
            return "truncated: it ends before its IEND chunk"
        length, cid = struct.unpack(">I4s", head)
        name = cid.decode("ascii", "replace")
        if first and (cid != b"IHDR" or length != 13):
            return "bad header: the first chunk is not a 13-byte IHDR"
        first = False
        computed, stored = _read_chunk_crcs(source, cid, length)
        if computed is None or stored is None:
            return f"truncated in the {name} chunk"
        if computed != stored and not _is_ancillary(cid):  # an optional one is skipped
            return f"bad CRC in the {name} chunk"
        if cid == b"IEND":
            return None
