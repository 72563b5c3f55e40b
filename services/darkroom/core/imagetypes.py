"""Recognising supported image formats by their magic bytes."""

from __future__ import annotations

# How many leading bytes are enough to tell every supported format apart: an ISO base media
# file (AVIF, HEIF) gives its major brand at 8..12 and its first compatible brands from 16.
SNIFF_BYTES = 32

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),  # BigTIFF: 64-bit offsets, same media type
    (b"MM\x00+", "image/tiff"),
)


def sniff_media_type(head: bytes) -> str | None:
    """The media type of an image starting with ``head``, or None when not supported."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return _sniff_image_file_format(head)
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    return None


# ISO base media file brands (ISO/IEC 23008-12, AV1 image format): AVIF stills and sequences,
# HEVC-coded HEIF; "mif1" and "msf1" say only "an image file", its compatible brands say more.
_AVIF_BRANDS = frozenset((b"avif", b"avis"))
_HEIC_BRANDS = frozenset((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"))
_HEIF_BRANDS = frozenset((b"mif1", b"msf1"))


def _sniff_image_file_format(head: bytes) -> str | None:
    """AVIF, HEIC or HEIF from the major brand of an ``ftyp`` box, or None for video (MP4)."""
    major = head[8:12]
    if major in _AVIF_BRANDS:
        return "image/avif"
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major not in _HEIF_BRANDS:
        return None
    box_end = min(len(head), int.from_bytes(head[:4], "big"))
    compatible = {head[at : at + 4] for at in range(16, box_end - 3, 4)}
    if compatible & _AVIF_BRANDS:
        return "image/avif"
    return "image/heic" if compatible & _HEIC_BRANDS else "image/heif"


EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/webp": "webp",
    "image/avif": "avif",
    "image/heic": "heic",
    "image/heif": "heif",
}
