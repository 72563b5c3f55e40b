"""Image classes an independent decoder showed coming back wrong (issue 14): key-colour
transparency, BigTIFF, 16-bit colour, broken files' reasons, unreadable optional PNG chunks.

Every file is made here, most byte by byte (support.pngfiles), so the expectation comes from the
samples written, not from the decoder under test.
"""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from darkroom.core.imagetypes import sniff_media_type
from darkroom.worker.codec import open_image
from darkroom.worker.operations import ImageRejected
from support.pngfiles import GREY, RGB, chunk, png, trns
from support.processing import SETTINGS, encode, run

# --- tRNS key colour on grey and RGB ---------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_a_grey_key_colour_is_transparent(bits: int) -> None:
    top = (1 << bits) - 1
    key = top if bits == 1 else top // 3
    samples = [[0, key, top, key], [top, 0, key, 0]]
    result, _ = run(png(samples, bits, GREY, [trns(key)]), "png")
    assert result.mode == "LA"
    alpha = [[result.getpixel((x, y))[1] for x in range(4)] for y in range(2)]
    assert alpha == [[0 if sample == key else 255 for sample in row] for row in samples]
    grey = [[result.getpixel((x, y))[0] for x in range(4)] for y in range(2)]
    assert grey == [[round(sample * 255 / top) for sample in row] for row in samples]


@pytest.mark.parametrize(
    "bits", [8, pytest.param(16, marks=pytest.mark.xfail(strict=True, reason="16-bit RGB"))]
)
def test_an_rgb_key_colour_is_transparent_only_where_every_sample_matches(bits: int) -> None:
    top = (1 << bits) - 1
    key = (top, 0, top // 5)
    near = (top - 1, 0, top // 5)  # one level off in red: opaque (at 16 bits, same high byte)
    pixels = [key, near, (0, 0, top // 5), key]
    result, _ = run(
        png([[sample for pixel in pixels for sample in pixel]], bits, RGB, [trns(*key)]), "png"
    )
    assert result.mode == "RGBA"
    assert [result.getpixel((x, 0))[3] for x in range(4)] == [0, 255, 255, 0]


def test_a_key_colour_outside_the_image_changes_nothing_visible() -> None:
    result, _ = run(png([[1, 2, 3, 4]], 8, GREY, [trns(200)]), "png")
    assert [result.convert("LA").getpixel((x, 0)) for x in range(4)] == [
        (1, 255),
        (2, 255),
        (3, 255),
        (4, 255),
    ]


# --- BigTIFF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_bigtiff_is_recognised_and_decoded(byte_order: str) -> None:
    image = Image.new("RGB", (6, 4), (10, 200, 30))
    image.putpixel((5, 3), (250, 1, 2))
    data = encode(image, "TIFF", big_tiff=True, tiffinfo={}, byteorder=byte_order).getvalue()
    assert data[:4] in (b"II+\x00", b"MM\x00+")
    assert sniff_media_type(data[:16]) == "image/tiff"
    result, media_type = run(data, "png")
    assert media_type == "image/png"
    assert (result.getpixel((0, 0)), result.getpixel((5, 3))) == ((10, 200, 30), (250, 1, 2))


# --- broken files say which format and what is wrong -----------------------------------------


def _good_png() -> bytes:
    return encode(Image.effect_noise((64, 64), 80)).getvalue()


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _jpeg() -> bytes:
    return encode(Image.effect_noise((64, 64), 80).convert("RGB"), "JPEG").getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            _flipped(_good_png(), 20),
            r"not a supported image: a broken PNG file \(bad CRC in the IHDR",
        ),
        (_flipped(_good_png(), 300), r"cannot decode the image: PNG file \(bad CRC in the IDAT"),
        (_good_png()[:600], r"cannot decode the image: PNG file \(truncated in the IDAT chunk"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, r"broken PNG file \(bad header"),
        (_jpeg()[:400], r"cannot decode the image: JPEG file \(truncated"),
        (
            b"\xff\xd8\xff\xe0" + b"\x00" * 40,
            r"not a supported image: a broken JPEG file \(bad header",
        ),
        (b"II*\x00" + b"\xff" * 40, r"not a supported image: a broken TIFF file \(bad header"),
        (b"GIF89a\x00\x00", r"not a supported image: a broken GIF file \(bad header"),
    ],
    ids=[
        "png-ihdr-crc",
        "png-idat-crc",
        "png-truncated",
        "png-no-header",
        "jpeg-truncated",
        "jpeg-header",
        "tiff-header",
        "gif-header",
    ],
)
def test_a_broken_file_says_its_format_and_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        run(data, "png")


def test_a_file_of_no_supported_format_is_still_just_not_supported() -> None:
    with pytest.raises(ImageRejected, match=r"^not a supported image \(PNG"):
        run(b"P6 4 4 255\n" + b"\x00" * 48, "png")


# --- an unreadable optional chunk is skipped -------------------------------------------------

_UNKNOWN_COMPRESSION_ICCP = (b"iCCP", b"profile\x00\x05" + zlib.compress(b"not a profile"))


def test_an_unreadable_iccp_chunk_is_skipped_and_reported() -> None:
    samples = [[0, 50, 100, 250]]
    data = png(samples, 8, GREY, [_UNKNOWN_COMPRESSION_ICCP])
    opened = open_image(io.BytesIO(data), SETTINGS)
    image, metadata = opened.decode()
    assert [image.getpixel((x, 0)) for x in range(4)] == samples[0]
    assert metadata.icc is None
    assert opened.warnings == (
        "skipped the unreadable optional iCCP chunk: Unknown compression method 5 in iCCP chunk",
    )
    result, _ = run(data, "png")
    assert [result.getpixel((x, 0)) for x in range(4)] == samples[0]


def test_a_sound_png_has_no_warnings() -> None:
    opened = open_image(io.BytesIO(png([[1, 2]], 8, GREY)), SETTINGS)
    opened.decode()
    assert opened.warnings == ()


def test_an_unreadable_critical_chunk_is_still_an_error() -> None:
    bad_header = png([[1, 2]], 8, GREY).replace(chunk(b"IHDR", b"")[:0], b"")
    bad_header = bad_header[:8] + chunk(b"IHDR", b"\x00" * 13) + bad_header[33:]
    with pytest.raises(ImageRejected):
        run(bad_header, "png")
