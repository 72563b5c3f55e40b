"""HEIF (HEIC, AVIF) item entries checked before the decoder sees them.

pi-heif 1.4.0 (the newest) crashes the whole process, a segmentation fault, when an item's type
or strings are not text: it makes a Python string of the bytes without checking that it could.
Pillow-heif's own test file ``invalid_metadata_type.heic`` (an ``Exif`` item typed ``E\xeaif``)
does it. ``find_item_fault`` walks the boxes to the item entries (``meta`` > ``iinf`` > ``infe``,
ISO/IEC 14496-12 8.11.6) and names the first whose type, or whose content type for a ``mime``
item, is not text, so the file is refused with a reason instead. Only the boxes on that path
are read; the image data is skipped over.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

_MAX_META_BYTES = 16 << 20  # the item table of a real file is kilobytes; larger is not read


def find_item_fault(source: BinaryIO) -> str | None:
    """What in the HEIF file's item entries a decoder could not take as text, or None; read
    from where ``source`` is, which it is left past."""
    for kind, start, end in _boxes(source):
        if kind == b"meta":
            if end is not None and end - start > _MAX_META_BYTES:
                return None  # not ours to judge: the decoder's limits apply
            source.seek(start)
            meta = source.read(end - start if end is not None else _MAX_META_BYTES)
            return _meta_fault(meta)
    return None


def _boxes(source: BinaryIO) -> Iterator[tuple[bytes, int, int | None]]:
    """(type, where its content starts, where it ends or None: to the end) of each box from
    where ``source`` is to the end of the file."""
    at = source.tell()
    while True:
        source.seek(at)
        head = source.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        content = at + 8
        if size == 1:
            large = source.read(8)
            if len(large) < 8:
                return
            (size,) = struct.unpack(">Q", large)
            content = at + 16
        if size == 0:
            yield kind, content, None
            return
        if size < content - at:
            return  # malformed: the decoder says what is wrong
        yield kind, content, at + size
        at += size


def _meta_fault(meta: bytes) -> str | None:
    """The first item entry of a ``meta`` box's content (a full box: 4 bytes of version and
    flags first) whose type or strings are not text."""
    for kind, body in _children(meta, 4):
        if kind != b"iinf" or len(body) < 4:
            continue
        count_bytes = 2 if body[0] == 0 else 4
        for entry_kind, entry in _children(body, 4 + count_bytes):
            if entry_kind == b"infe" and (fault := _entry_fault(entry)):
                return fault
    return None


def _children(data: bytes, at: int) -> Iterator[tuple[bytes, bytes]]:
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if size < 8 or at + size > len(data):
            return
        yield kind, data[at + 8 : at + size]
        at += size


def _entry_fault(entry: bytes) -> str | None:
    """An ``infe`` box's content: version 2 and 3 hold an item type and strings after it."""
    if not entry or entry[0] not in (2, 3):
        return None
    id_bytes = 2 if entry[0] == 2 else 4
    at = 4 + id_bytes + 2  # version and flags, item id, protection index
    item_type = entry[at : at + 4]
    if len(item_type) == 4 and not all(0x20 <= byte < 0x7F for byte in item_type):
        return f"an item whose type is not text ({item_type!r})"
    if item_type == b"mime":  # its content type is read as text too; its name is not
        strings = entry[at + 4 :].split(b"\0")
        content_type = strings[1] if len(strings) > 1 else b""
        try:
            content_type.decode("utf-8")
        except UnicodeDecodeError:
            return f"an item whose content type is not UTF-8 ({content_type[:40]!r})"
    return None
