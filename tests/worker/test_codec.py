"""Tests for darkroom.worker.codec, through process_image: formats, modes, metadata, bad input."""

from __future__ import annotations

import io
import time

import pytest
from PIL import ExifTags, Image, ImageCms, ImageFile, PngImagePlugin

from darkroom.worker.operations import ImageRejected, ProcessingSettings, process_image
from support.images import png_bomb
from support.processing import SETTINGS, encode, rgb_marked, run

SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- output formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "media_type", "fmt"),
    [
        ("swap", "image/png", "PNG"),
        ("png", "image/png", "PNG"),
        ("jpeg", "image/jpeg", "JPEG"),
        ("webp:50", "image/webp", "WEBP"),
    ],
)
def test_output_format(pipeline: str, media_type: str, fmt: str) -> None:
    result, returned = run(Image.new("RGBA", (4, 4), (1, 2, 3, 255)), pipeline)
    assert (returned, result.format) == (media_type, fmt)


def test_jpeg_paints_transparency_white() -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    result, _ = run(image, "jpeg")
    assert result.mode == "RGB"
    assert result.getpixel((8, 8)) == pytest.approx((255, 255, 255), abs=2)


def test_jpeg_quality_comes_from_the_pipeline_or_the_settings() -> None:
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    sizes = {}
    for pipeline, config in [
        ("jpeg:10", SETTINGS),
        ("jpeg:95", SETTINGS),
        ("jpeg", ProcessingSettings(jpeg_quality=10)),
    ]:
        destination = io.BytesIO()
        process_image(encode(noisy), destination, pipeline, config)
        sizes[pipeline] = len(destination.getvalue())
    assert sizes["jpeg:10"] == sizes["jpeg"] < sizes["jpeg:95"]


def test_png_uses_the_compress_level_setting() -> None:
    flat = Image.new("RGB", (64, 64), (9, 9, 9))
    lengths = []
    for level in (0, 9):
        destination = io.BytesIO()
        process_image(
            encode(flat), destination, "png", ProcessingSettings(png_compress_level=level)
        )
        lengths.append(len(destination.getvalue()))
    assert lengths[0] > 64 * 64 * 3 > lengths[1]


# --- modes -----------------------------------------------------------------------------------

SIXTEEN_BIT_VALUES = [0x0000, 0x00FF, 0x1234, 0xFF00, 0xFFFF]


def sixteen_bit_grey() -> Image.Image:
    image = Image.new("I;16", (len(SIXTEEN_BIT_VALUES), 1))
    for x, value in enumerate(SIXTEEN_BIT_VALUES):
        image.putpixel((x, 0), value)
    return image


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_stays_sixteen_bit(fmt: str) -> None:
    result, _ = run(encode(sixteen_bit_grey(), fmt), "swap,grayscale,flip,flop,flop")
    assert result.mode == "I;16"
    assert [result.getpixel((x, 0)) for x in range(5)] == SIXTEEN_BIT_VALUES


@pytest.mark.parametrize("pipeline", ["jpeg:100", "blur:0.1"])
def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(pipeline: str) -> None:
    result, _ = run(encode(sixteen_bit_grey()), pipeline)
    assert result.mode == "L"
    values = [result.getpixel((x, 0)) for x in range(5)]
    assert values == pytest.approx([0, 1, 0x12, 0xFE, 0xFF], abs=3)


def test_sixteen_bit_grey_survives_rotation() -> None:
    image = Image.new("I;16", (20, 20), 0x1234)
    result, _ = run(encode(image), "rotate:30")
    assert result.getpixel((result.width // 2, result.height // 2)) == 0x1234


def test_float_image_is_stretched_over_its_range() -> None:
    image = Image.new("F", (2, 1))
    image.putpixel((0, 0), 0.25)
    image.putpixel((1, 0), 0.75)
    result, _ = run(encode(image, "TIFF"), "png")
    assert (result.getpixel((0, 0)), result.getpixel((1, 0))) == (0, 65535)


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50])
    image.putpixel((1, 0), 1)
    result, _ = run(encode(image, "GIF", transparency=0), "swap")
    assert result.mode == "RGBA"
    assert result.getpixel((0, 0))[3] == 0
    assert result.getpixel((1, 0)) == (100, 200, 50, 255)


def test_palette_without_transparency_becomes_rgb() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30])
    result, _ = run(encode(image), "swap")
    assert (result.mode, result.getpixel((0, 0))) == ("RGB", (20, 10, 30))


def test_cmyk_becomes_rgb() -> None:
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # full magenta and yellow: press red
    result, _ = run(encode(image, "TIFF"), "swap")
    green, red, blue = result.getpixel((0, 0))  # swap: red and green exchanged
    assert result.mode == "RGB" and red > 200 and green < 90 and blue < 90


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    source = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result, _ = run(source, "png")
    assert result.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_supported_input_format(fmt: str) -> None:
    result, _ = run(encode(Image.new("RGB", (8, 6), (0, 0, 0)), fmt), "png")
    assert result.size == (8, 6)


# --- metadata --------------------------------------------------------------------------------


GPS = {
    ExifTags.GPS.GPSLatitudeRef: "N",
    ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.5),
    ExifTags.GPS.GPSLongitudeRef: "E",
    ExifTags.GPS.GPSLongitude: (13.0, 24.0, 37.25),
}
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    b' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
    b' tiff:Orientation="{orientation}" dc:source="secret xmp"/></rdf:RDF></x:xmpmeta>'
)


def photo_with_metadata(orientation: int) -> io.BytesIO:
    """A 40x20 JPEG with a camera make, GPS position, capture details, XMP, comment and ICC."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Darkroom Camera"
    exif[ExifTags.IFD.GPSInfo] = GPS
    exif[ExifTags.IFD.Exif] = {
        ExifTags.Base.DateTimeOriginal: "2024:05:06 07:08:09",
        ExifTags.Base.ExifImageWidth: 40,
        ExifTags.Base.ExifImageHeight: 20,
    }
    return encode(
        rgb_marked((40, 20), (0, 0)),
        "JPEG",
        quality=100,
        exif=exif,
        comment=b"secret comment",
        xmp=XMP.replace(b"{orientation}", str(orientation).encode()),
        icc_profile=SRGB_PROFILE,
    )


def metadata_blocks(data: bytes) -> list[str]:
    """The metadata blocks in a PNG, JPEG or WebP file: "exif", "xmp" or "text" for each."""
    blocks = []
    if data.startswith(b"\x89PNG"):
        position = 8
        while position < len(data):
            length = int.from_bytes(data[position : position + 4], "big")
            kind, body = data[position + 4 : position + 8], data[position + 8 :][:length]
            if kind == b"eXIf":
                blocks.append("exif")
            elif kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\x00"):
                blocks.append("xmp")
            elif kind in (b"tEXt", b"zTXt", b"iTXt"):
                blocks.append("text")
            position += 12 + length
    elif data.startswith(b"\xff\xd8"):
        position = 2
        while data[position + 1] != 0xDA:  # up to the start of the pixels
            marker, length = data[position + 1], int.from_bytes(data[position + 2 : position + 4])
            body = data[position + 4 : position + 2 + length]
            if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
                blocks.append("exif")
            elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
                blocks.append("xmp")
            elif marker == 0xFE or marker == 0xE1:
                blocks.append("text")
            position += 2 + length
    else:
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        position = 12
        while position < len(data):
            kind = data[position : position + 4]
            length = int.from_bytes(data[position + 4 : position + 8], "little")
            blocks += {b"EXIF": ["exif"], b"XMP ": ["xmp"]}.get(kind, [])
            position += 8 + length + length % 2
    return blocks


def processed(source: io.BytesIO, pipeline: str) -> tuple[bytes, Image.Image]:
    destination = io.BytesIO()
    process_image(source, destination, pipeline, SETTINGS)
    result = Image.open(io.BytesIO(destination.getvalue()))
    result.load()
    return destination.getvalue(), result


def test_exif_orientation_is_applied() -> None:
    result, _ = run(photo_with_metadata(orientation=6), "png")  # 6: display rotated clockwise
    assert result.size == (20, 40)
    x, y = max(((x, y) for y in range(40) for x in range(20)), key=lambda p: result.getpixel(p)[0])
    assert (x, y) == (19, 0)


@pytest.mark.parametrize("pipeline", ["png", "jpeg", "webp", "grayscale,png"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_metadata_is_stripped_and_icc_profile_kept(pipeline: str, orientation: int) -> None:
    data, result = processed(photo_with_metadata(orientation), pipeline)
    assert metadata_blocks(data) == []
    assert b"secret" not in data
    assert b"Darkroom Camera" not in data
    assert not result.getexif()
    assert "xmp" not in result.info
    grey = pipeline.startswith("grayscale")  # the RGB profile no longer applies
    assert result.info.get("icc_profile") == (None if grey else SRGB_PROFILE)


def png_with_text_chunks() -> io.BytesIO:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Darkroom Camera"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret comment")
    text.add_text("Author", "secret author", zip=True)
    text.add_itxt("XML:com.adobe.xmp", XMP.replace(b"{orientation}", b"1").decode())
    return encode(Image.new("RGB", (4, 4)), "PNG", pnginfo=text, exif=exif)


@pytest.mark.parametrize("pipeline", ["png", "jpeg", "webp"])
def test_png_text_chunks_are_dropped(pipeline: str) -> None:
    data, _ = processed(png_with_text_chunks(), pipeline)
    assert metadata_blocks(data) == []
    assert b"secret" not in data and b"Darkroom" not in data


@pytest.mark.parametrize(
    ("pipeline", "media_type"),
    [
        ("png,keep-metadata", "PNG"),
        ("jpeg,keep-metadata", "JPEG"),
        ("keep-metadata,webp", "WEBP"),
    ],
)
def test_keep_metadata_carries_exif_and_xmp_upright(pipeline: str, media_type: str) -> None:
    data, result = processed(photo_with_metadata(orientation=6), pipeline)
    assert result.format == media_type
    assert sorted(metadata_blocks(data)) == ["exif", "xmp"]  # the comment is not carried
    assert b"secret comment" not in data
    assert result.size == (20, 40)  # orientation applied to the pixels...
    exif = result.getexif()
    assert exif[ExifTags.Base.Orientation] == 1  # ...so the tag says upright
    assert exif[ExifTags.Base.Make] == "Darkroom Camera"
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == GPS
    details = exif.get_ifd(ExifTags.IFD.Exif)
    assert details[ExifTags.Base.DateTimeOriginal] == "2024:05:06 07:08:09"
    assert details[ExifTags.Base.ExifImageWidth] == 20
    assert details[ExifTags.Base.ExifImageHeight] == 40
    xmp = result.info["xmp"]
    assert b'dc:source="secret xmp"' in xmp
    assert b"tiff:Orientation" not in xmp  # it said 6, which is no longer true
    assert result.info.get("icc_profile") == SRGB_PROFILE


def test_keep_metadata_gives_the_exif_the_output_size() -> None:
    _, result = processed(photo_with_metadata(orientation=1), "resize:10x10,keep-metadata")
    details = result.getexif().get_ifd(ExifTags.IFD.Exif)
    assert result.size == (10, 5)
    assert details[ExifTags.Base.ExifImageWidth] == 10
    assert details[ExifTags.Base.ExifImageHeight] == 5


def test_keep_metadata_keeps_exif_and_xmp_of_a_png_but_not_its_text() -> None:
    data, result = processed(png_with_text_chunks(), "keep-metadata")
    assert sorted(metadata_blocks(data)) == ["exif", "xmp"]
    assert b"secret comment" not in data and b"secret author" not in data
    assert result.getexif()[ExifTags.Base.Make] == "Darkroom Camera"
    assert b"secret xmp" in result.info["xmp"]


def test_keep_metadata_alone_changes_no_pixels() -> None:
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    result, _ = run(image, "keep-metadata")
    assert result.tobytes() == image.tobytes()


def test_keep_metadata_without_metadata_writes_none() -> None:
    data, result = processed(encode(Image.new("RGB", (4, 4)), "JPEG"), "keep-metadata")
    assert metadata_blocks(data) == []
    assert not result.getexif()


def test_keep_metadata_drops_a_tiffs_storage_tags() -> None:
    source = encode(
        Image.new("RGB", (8, 4)),
        "TIFF",
        compression="tiff_lzw",
        tiffinfo={ExifTags.Base.Make: "Darkroom Camera", ExifTags.Base.Artist: "Ada"},
    )
    _, result = processed(source, "jpeg,keep-metadata")
    exif = result.getexif()
    assert dict(exif) == {
        ExifTags.Base.Make: "Darkroom Camera",
        ExifTags.Base.Artist: "Ada",
        ExifTags.Base.Orientation: 1,
    }


def test_keep_metadata_refuses_xmp_too_large_for_a_jpeg() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "x" * 70_000 + "</x:xmpmeta>")
    source = encode(Image.new("RGB", (4, 4)), "PNG", pnginfo=text)
    with pytest.raises(ImageRejected, match=r"XMP is 70023 bytes, more than a JPEG holds"):
        processed(source, "jpeg,keep-metadata")
    source.seek(0)
    data, _ = processed(source, "webp,keep-metadata")  # WebP holds it
    assert metadata_blocks(data) == ["xmp"]


def test_colour_profile_is_dropped_when_the_image_turns_grey() -> None:
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    result, _ = run(encode(image, icc_profile=SRGB_PROFILE), "grayscale")
    assert result.mode == "L"
    assert "icc_profile" not in result.info


def test_grey_profile_is_kept_on_grey_output() -> None:
    grey_profile = SRGB_PROFILE[:16] + b"GRAY" + SRGB_PROFILE[20:]  # only the header is read
    result, _ = run(encode(Image.new("L", (4, 4), 9), icc_profile=grey_profile), "png")
    assert result.info.get("icc_profile") == grey_profile


# --- rejected images -------------------------------------------------------------------------


def noisy_png() -> bytes:
    return encode(Image.effect_noise((64, 64), 80)).getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a supported image"),
        (b"hello, world" * 10, "not a supported image"),
        (encode(Image.new("RGB", (4, 4)), "PPM").getvalue(), "not a supported image"),
        (noisy_png()[:600], "cannot decode the image"),
        (encode(Image.effect_noise((64, 64), 80), "JPEG").getvalue()[:400], "cannot decode"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a supported image"),
    ],
    ids=["empty", "text", "ppm", "truncated-png", "truncated-jpeg", "png-signature-only"],
)
def test_bad_input_is_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        run(data, "swap")


def test_truncated_image_is_rejected_even_if_someone_allowed_truncation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageRejected):
        run(noisy_png()[:600], "swap")


def test_image_over_the_pixel_limit_is_rejected() -> None:
    with pytest.raises(ImageRejected, match=r"image is 20x10 \(200 pixels\).*limit of 199"):
        run(Image.new("RGB", (20, 10)), "swap", ProcessingSettings(max_image_pixels=199))


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    bomb = png_bomb(5_000, 5_000)  # 25 MB of pixels in about 25 kB
    assert len(bomb) < 50_000
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match="more than the limit"):
        run(bomb, "swap", ProcessingSettings(max_image_pixels=1_000_000))
    assert time.perf_counter() - started < 0.5


def test_an_image_over_pillows_own_limit_is_refused_quoting_the_configured_limit() -> None:
    bomb = png_bomb(14_000, 14_000)  # over twice Pillow's 89 M pixels: it refuses at open
    with pytest.raises(ImageRejected, match="too large: more than the limit of 1000000 pixels"):
        run(bomb, "thumbnail:64", ProcessingSettings(max_image_pixels=1_000_000))


def test_pillow_bomb_error_becomes_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageRejected, match="too large"):
        run(Image.new("RGB", (5, 5)), "swap", ProcessingSettings(max_image_pixels=10**9))


# pytest restores the warning filters after collection, dropping the one the module installs.
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_becomes_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(ImageRejected, match="too large"):
        run(Image.new("RGB", (5, 5)), "swap", ProcessingSettings(max_image_pixels=10**9))


# --- the metadata report ---------------------------------------------------------------------


def notes_of(source: io.BytesIO, pipeline: str) -> list[str]:
    notes: list[str] = []
    process_image(source, io.BytesIO(), pipeline, SETTINGS, notes=notes)
    return notes


def photo_with_serial_numbers() -> io.BytesIO:
    """A JPEG whose EXIF has a GPS position and camera and lens serial numbers, and XMP."""
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = GPS
    exif[ExifTags.IFD.Exif] = {
        ExifTags.Base.BodySerialNumber: "SN-12345",
        ExifTags.Base.LensSerialNumber: "LN-678",
    }
    xmp = XMP.replace(b"{orientation}", b"1")
    return encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif, xmp=xmp)


@pytest.mark.parametrize("pipeline", ["png", "jpeg", "webp", "grayscale,png"])
def test_the_report_names_what_the_result_dropped(pipeline: str) -> None:
    assert notes_of(photo_with_metadata(orientation=6), pipeline) == [
        "metadata removed: EXIF (GPS position, camera make and model, date and time), XMP, comment"
    ]
    assert notes_of(photo_with_serial_numbers(), pipeline) == [
        "metadata removed: EXIF (GPS position, camera serial number, lens serial number), XMP"
    ]


def test_the_report_names_a_pngs_text_chunks() -> None:
    assert notes_of(png_with_text_chunks(), "png") == [
        "metadata removed: EXIF (camera make and model), XMP, text chunks"
    ]


def test_with_keep_metadata_only_what_is_never_kept_is_reported() -> None:
    assert notes_of(photo_with_serial_numbers(), "keep-metadata") == []
    assert notes_of(photo_with_metadata(orientation=1), "keep-metadata") == [
        "metadata removed: comment"  # comments are never kept (see the module's docstring)
    ]
    assert notes_of(png_with_text_chunks(), "keep-metadata") == ["metadata removed: text chunks"]


def test_an_image_without_metadata_reports_nothing() -> None:
    icc_only = encode(Image.new("RGB", (4, 4)), "JPEG", icc_profile=SRGB_PROFILE)
    assert notes_of(icc_only, "png") == []
    assert notes_of(photo_with_metadata(orientation=6), "png")  # the orientation alone is not
    only_orientation = Image.Exif()
    only_orientation[ExifTags.Base.Orientation] = 6
    turned = encode(Image.new("RGB", (4, 4)), "JPEG", exif=only_orientation)
    assert notes_of(turned, "png") == []  # applied to the pixels, not dropped
