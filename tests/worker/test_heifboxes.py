"""HEIF item entries that would crash pi-heif are refused with a reason (darkroom.worker.heifboxes).

Each file is a HEIC written by pillow-heif's encoder with its EXIF or XMP item's type or content
type changed in place (HEIF boxes carry no checksum, so the file stays otherwise sound).
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from darkroom.worker.heifboxes import find_item_fault
from darkroom.worker.operations import ImageRejected
from support.processing import encode, run

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>'


def _heic(**options: object) -> bytes:
    return encode(Image.new("RGB", (16, 16), (200, 30, 30)), "HEIF", quality=90, **options).read()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera"  # Make
    return exif.tobytes()


def _replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def _bad_item_type() -> bytes:  # the item entry's type (after its 2-byte protection index)
    return _replaced(_heic(exif=_exif()), b"\x00\x00Exif\x00", b"\x00\x00E\xeaif\x00")


def _bad_content_type() -> bytes:
    return _replaced(_heic(xmp=XMP), b"application/rdf+xml", b"appl\xeacation/rdf+xml")


def test_a_sound_heic_has_no_fault_and_is_processed() -> None:
    data = _heic(exif=_exif(), xmp=XMP)
    assert find_item_fault(io.BytesIO(data)) is None
    result, _ = run(data, "png")
    assert result.size == (16, 16)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_bad_item_type, r"an item whose type is not text \(b'E\\xeaif'\)"),
        (_bad_content_type, r"an item whose content type is not UTF-8"),
    ],
    ids=["item-type", "content-type"],
)
def test_an_item_that_is_not_text_is_refused_with_a_reason(make, reason: str) -> None:
    with pytest.raises(ImageRejected, match=r"^not a supported image: a broken HEIC file \("):
        run(make(), "png")
    with pytest.raises(ImageRejected, match=reason):
        run(make(), "png")


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        (0.5, r"^not a supported image: a broken HEIF file \(bad header: .*meta"),
        (-10, r"^cannot decode the image: HEIF file \(.*outside of file bounds[^\n]*\)$"),
    ],
    ids=["half", "end-cut"],
)
def test_a_broken_heic_is_refused_naming_its_format(keep: float, reason: str) -> None:
    data = _heic()
    cut = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    with pytest.raises(ImageRejected, match=reason):
        run(data[:cut], "png")


@pytest.mark.parametrize(
    "make", [_bad_item_type, _bad_content_type], ids=["item-type", "content-type"]
)
def test_pi_heif_still_crashes_on_such_a_file(make, tmp_path) -> None:
    # Why the check exists: when this fails, pi-heif has mended it, and heifboxes may go.
    path = tmp_path / "bad.heic"
    path.write_bytes(make())
    child = textwrap.dedent(f"""
        import pi_heif
        from PIL import Image
        pi_heif.register_heif_opener()
        Image.open({str(path)!r}).load()
    """)
    finished = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert finished.returncode == -11  # SIGSEGV


def test_a_file_cut_short_in_its_boxes_is_left_to_the_decoder() -> None:
    data = _heic(exif=_exif())
    for end in (4, 12, 40, 200):
        assert find_item_fault(io.BytesIO(data[:end])) is None
