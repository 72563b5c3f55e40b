"""AVIF and HEIC/HEIF in, AVIF out: sniffing, decoding, limits, orientation, metadata.

The test files are made here: Pillow writes AVIF, pillow-heif's encoder HEIC (the worker decodes
it with pi-heif, which has no encoder).
Both are lossy, so colours are compared with a tolerance against the flat colours written.
"""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image, ImageCms

from darkroom.core.imagetypes import EXTENSIONS, SNIFF_BYTES, sniff_media_type
from darkroom.worker.codec import INPUT_FORMATS, ImageRejected, ProcessingSettings
from darkroom.worker.operations import process_image
from support.processing import SETTINGS, encode, run

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _two_colours(size: tuple[int, int] = (60, 40)) -> Image.Image:
    """Red, with a blue 10x10 square in the top-left corner: shows where the corner went."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (0, 0, 10, 10))
    return image


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Phone"
    return exif.tobytes()


# --- sniffing --------------------------------------------------------------------------------


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08meta"


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (_ftyp(b"avif", b"mif1", b"miaf"), "image/avif"),
        (_ftyp(b"avis", b"msf1"), "image/avif"),
        (_ftyp(b"heic", b"mif1"), "image/heic"),
        (_ftyp(b"heix", b"mif1"), "image/heic"),
        (_ftyp(b"mif1", b"avif"), "image/avif"),  # the brand says "image", the list says AV1
        (_ftyp(b"mif1", b"miaf", b"heic"), "image/heic"),
        (_ftyp(b"msf1"), "image/heif"),
        (_ftyp(b"isom", b"mp41"), None),  # an MP4 video is not an image
        (_ftyp(b"mp42"), None),
        # a compatible brand past the end of the ftyp box is not one
        ((16).to_bytes(4, "big") + b"ftypmif1\x00\x00\x00\x00avif", "image/heif"),
    ],
)
def test_image_file_formats_are_sniffed_by_brand(head: bytes, media_type: str | None) -> None:
    assert sniff_media_type(head[:SNIFF_BYTES]) == media_type


@pytest.mark.parametrize(("fmt", "media_type"), [("AVIF", "image/avif"), ("HEIF", "image/heic")])
def test_files_the_encoders_write_are_sniffed(fmt: str, media_type: str) -> None:
    head = encode(_two_colours(), fmt).read(SNIFF_BYTES)
    assert sniff_media_type(head) == media_type
    assert media_type in EXTENSIONS


def test_the_new_formats_are_decoders_we_trust() -> None:
    assert {"AVIF", "HEIF"} <= set(INPUT_FORMATS)


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_are_decoded(fmt: str) -> None:
    result, media_type = run(encode(_two_colours(), fmt, quality=90), "png")
    assert media_type == "image/png"
    assert result.size == (60, 40)
    assert _close(result.getpixel((2, 2)), BLUE)
    assert _close(result.getpixel((50, 30)), RED)


def test_avif_with_alpha_keeps_it() -> None:
    image = Image.new("RGBA", (32, 32), (*RED, 255))
    image.paste((0, 0, 0, 0), (0, 0, 16, 32))
    result, _ = run(encode(image, "AVIF", quality=90), "png")
    assert result.mode == "RGBA"
    assert result.getpixel((4, 4))[3] == 0
    assert result.getpixel((28, 4))[3] == 255


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    # Orientation 6: the stored picture is to be turned a quarter clockwise to be upright, so
    # the blue top-left corner ends at the top right.
    result, _ = run(encode(_two_colours(), fmt, quality=90, exif=_exif(6)), "png")
    assert result.size == (40, 60)
    assert _close(result.getpixel((37, 2)), BLUE)
    assert _close(result.getpixel((2, 2)), RED)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_the_pixel_limit_applies_to_the_declared_size(fmt: str) -> None:
    small = ProcessingSettings(max_image_pixels=60 * 40 - 1)
    with pytest.raises(ImageRejected, match=r"image is 60x40 \(2400 pixels\), more than the limit"):
        run(encode(_two_colours(), fmt), "png", small)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_the_pixel_limit_is_checked_before_decoding(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = encode(_two_colours(), fmt)
    opened = Image.open(io.BytesIO(source.getvalue()))
    # Any decoding of the pixels fails the test: the size must be judged from the header.
    monkeypatch.setattr(type(opened), "load", lambda self: pytest.fail("pixels decoded"))
    small = ProcessingSettings(max_image_pixels=1000)
    with pytest.raises(ImageRejected, match="more than the limit of 1000 pixels"):
        run(source, "png", small)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_metadata_is_dropped_unless_kept(fmt: str) -> None:
    source = encode(_two_colours(), fmt, exif=_exif(1), xmp=b"<x:xmpmeta>phone</x:xmpmeta>")
    dropped, _ = run(io.BytesIO(source.getvalue()), "png")
    assert not dropped.getexif() and "xmp" not in dropped.info
    kept, _ = run(io.BytesIO(source.getvalue()), "png,keep-metadata")
    assert kept.getexif()[ExifTags.Base.Make] == "Phone"


# --- AVIF output -----------------------------------------------------------------------------


def test_avif_output() -> None:
    result, media_type = run(_two_colours(), "avif")
    assert (media_type, result.format, result.size) == ("image/avif", "AVIF", (60, 40))
    assert _close(result.getpixel((2, 2)), BLUE, tolerance=30)


def test_avif_output_is_what_the_storage_sniffs() -> None:
    destination = io.BytesIO()
    process_image(encode(_two_colours()), destination, "avif", SETTINGS)
    assert sniff_media_type(destination.getvalue()[:SNIFF_BYTES]) == "image/avif"


def _noise(size: tuple[int, int] = (128, 128)) -> Image.Image:
    return Image.effect_noise(size, 64).convert("RGB")


def test_avif_quality_is_used() -> None:
    sizes = {}
    for quality in (10, 90):
        destination = io.BytesIO()
        process_image(encode(_noise()), destination, f"avif:{quality}", SETTINGS)
        sizes[quality] = len(destination.getvalue())
    assert sizes[10] < sizes[90] / 2


def test_avif_output_keeps_alpha_and_grey() -> None:
    transparent, _ = run(Image.new("RGBA", (8, 8), (10, 200, 10, 0)), "avif")
    assert transparent.mode == "RGBA" and transparent.getpixel((3, 3))[3] == 0
    grey_alpha, _ = run(Image.new("LA", (8, 8), (100, 0)), "avif")
    assert grey_alpha.getpixel((3, 3))[3] == 0
    sixteen = Image.new("I;16", (8, 8), 40_000)
    grey, _ = run(sixteen, "avif")
    assert _close((grey.convert("L").getpixel((3, 3)),), (40_000 // 257,), tolerance=3)


def test_avif_output_keeps_metadata_when_asked_and_the_profile_always() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(
        _two_colours(), "PNG", exif=_exif(6), icc_profile=profile, pnginfo=None
    ).getvalue()
    dropped, _ = run(source, "avif")
    assert not dropped.getexif()
    assert dropped.info.get("icc_profile") == profile
    kept, _ = run(source, "avif,keep-metadata")
    exif = kept.getexif()
    assert exif[ExifTags.Base.Make] == "Phone"
    assert exif.get(ExifTags.Base.Orientation, 1) == 1  # the pixels are upright already
    assert kept.size == (40, 60)


def test_heic_in_avif_out() -> None:
    result, media_type = run(encode(_two_colours(), "HEIF", quality=90), "resize:30x30,avif:90")
    assert (media_type, result.size) == ("image/avif", (30, 20))
    assert _close(result.getpixel((25, 15)), RED, tolerance=20)
