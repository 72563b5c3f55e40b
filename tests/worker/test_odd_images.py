"""Image classes an independent decoder showed coming back wrong (issue 14): key-colour
transparency, BigTIFF, 16-bit colour, broken files' reasons, unreadable optional PNG chunks,
CMYK colour (through the embedded profile, or FOGRA39 press colour when there is none).

Every file is made here, most byte by byte (support.pngfiles), so the expectation comes from the
samples written, not from the decoder under test.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import pillow_heif
import pytest
from falcon import testing
from PIL import Image, ImageChops, ImageCms

from darkroom.core.config import Config
from darkroom.core.imagetypes import sniff_media_type
from darkroom.worker.codec import open_image
from darkroom.worker.loop import TaskLoop
from darkroom.worker.metrics import TaskMetrics
from darkroom.worker.operations import ImageRejected, process_image
from darkroom.worker.service import timed_processor
from support.cielab import press_lab_to_srgb
from support.iccprofiles import toy_cmyk_profile
from support.inprocess import master_side
from support.pngfiles import CHANNELS, GREY, RGB, RGBA, chunk, png, trns
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


@pytest.mark.parametrize("bits", [8, 16])
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
    destination, warnings = io.BytesIO(), ["already there"]
    process_image(io.BytesIO(data), destination, "png", SETTINGS, notes=warnings)
    assert warnings == ["already there", *opened.warnings]
    result = Image.open(destination)
    assert [result.getpixel((x, 0)) for x in range(4)] == samples[0]


def _crc_broken(data: bytes, kind: bytes) -> bytes:
    """``data`` with the stored CRC of its first ``kind`` chunk off by one bit."""
    at = data.index(kind) - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    crc_at = at + 8 + length
    (crc,) = struct.unpack(">I", data[crc_at : crc_at + 4])
    return data[:crc_at] + struct.pack(">I", crc ^ 1) + data[crc_at + 4 :]


def test_an_optional_chunk_failing_its_crc_is_skipped_unused_and_reported() -> None:
    # libpng (browsers, libvips) discards such a chunk; Pillow refused the whole file. What the
    # chunk says is not used either: this tRNS would make the grey level 50 transparent.
    samples = [[0, 50, 100, 250]]
    data = _crc_broken(png(samples, 8, GREY, [trns(50)]), b"tRNS")
    opened = open_image(io.BytesIO(data), SETTINGS)
    image, _ = opened.decode()
    assert image.mode == "L"
    assert [image.getpixel((x, 0)) for x in range(4)] == samples[0]
    assert opened.warnings == ("skipped the optional tRNS chunk: bad CRC",)


def test_a_sound_optional_chunk_is_still_used() -> None:
    # the control: the same file with its CRC right has the key colour transparent
    opened = open_image(io.BytesIO(png([[0, 50, 100, 250]], 8, GREY, [trns(50)])), SETTINGS)
    image, _ = opened.decode()
    assert image.mode == "LA" and image.getpixel((1, 0)) == (50, 0)
    assert opened.warnings == ()


def test_a_file_failing_elsewhere_is_not_blamed_on_an_optional_chunks_crc() -> None:
    samples = [[(x * x + y * 7) % 256 for x in range(64)] for y in range(64)]
    data = _crc_broken(png(samples, 8, GREY, [(b"tEXt", b"a\x00b")]), b"tEXt")
    with pytest.raises(ImageRejected, match=r"PNG file \(truncated in the IDAT chunk\)"):
        run(data[: data.index(b"IDAT") + 200], "png")


def _cut_after_image_data(kind: bytes, data: bytes) -> bytes:
    """A grey PNG whose file ends halfway through a ``kind`` chunk after its image data."""
    whole = png([[0, 50, 100, 250], [9, 8, 7, 6]], 8, GREY)
    end = whole.index(b"IEND") - 4
    return whole[:end] + chunk(kind, data)[: 8 + len(data) // 2]


@pytest.mark.parametrize("kind", [b"tEXt", b"IDAT"], ids=["text-chunk", "empty-idat-header"])
def test_a_file_cut_off_after_its_image_data_is_read_with_a_note(kind: bytes) -> None:
    # A download cut short in the chunks after the pixels (Pillow's truncated_end_chunk.png is
    # a second IDAT header): libpng and libvips read it; Pillow refused the whole image.
    data = _cut_after_image_data(kind, b"Comment\x00" + b"x" * 40)
    notes: list[str] = []
    destination = io.BytesIO()
    process_image(io.BytesIO(data), destination, "png", SETTINGS, notes=notes)
    result = Image.open(destination)
    assert [[result.getpixel((x, y)) for x in range(4)] for y in range(2)] == [
        [0, 50, 100, 250],
        [9, 8, 7, 6],
    ]
    name = kind.decode()
    assert notes == [
        f"skipped the {name} chunk cut off by the end of the file, after the image data"
    ]


def test_a_file_cut_off_inside_its_image_data_is_still_refused() -> None:
    samples = [[(x * y) % 256 for x in range(64)] for y in range(64)]
    whole = png(samples, 8, GREY)
    data = whole[: whole.index(b"IDAT") + 100]
    with pytest.raises(ImageRejected, match=r"PNG file \(truncated in the IDAT chunk\)"):
        run(data, "png")


def test_an_animation_cut_off_after_its_first_frame_gives_its_still_image() -> None:
    # An APNG cut in a later frame: its animation is what cannot be read, not its still image.
    frames = [Image.new("L", (4, 2), level) for level in (10, 200, 90)]
    animated = encode(frames[0], "PNG", save_all=True, append_images=frames[1:]).getvalue()
    cut = animated[: animated.rindex(b"fdAT") + 6]
    notes: list[str] = []
    destination = io.BytesIO()
    process_image(io.BytesIO(cut), destination, "png", SETTINGS, notes=notes)
    result = Image.open(destination)
    assert not getattr(result, "is_animated", False)
    assert result.convert("L").getpixel((0, 0)) == 10
    assert notes == ["still image only: its frames cannot be read (Truncated File Read)"]


def test_a_sound_png_has_no_warnings() -> None:
    opened = open_image(io.BytesIO(png([[1, 2]], 8, GREY)), SETTINGS)
    opened.decode()
    assert opened.warnings == ()


def test_an_unreadable_critical_chunk_is_still_an_error() -> None:
    bad_header = png([[1, 2]], 8, GREY).replace(chunk(b"IHDR", b"")[:0], b"")
    bad_header = bad_header[:8] + chunk(b"IHDR", b"\x00" * 13) + bad_header[33:]
    with pytest.raises(ImageRejected):
        run(bad_header, "png")


# --- 16-bit colour ---------------------------------------------------------------------------


def read_png_samples(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    """(bit depth, colour type, rows of pixels) of a non-interlaced PNG whose rows all use
    filter 0, read here with struct and zlib: a decoder independent of Pillow."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height, bits, colour_type = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            compressed += body
        position += 12 + length
    assert bits == 16
    channels = CHANNELS[colour_type]
    raw, row_bytes = zlib.decompress(compressed), width * channels * 2
    rows = []
    for y in range(height):
        row = raw[y * (row_bytes + 1) : (y + 1) * (row_bytes + 1)]
        assert row[0] == 0
        samples = struct.unpack(f">{width * channels}H", row[1:])
        rows.append([samples[x * channels : (x + 1) * channels] for x in range(width)])
    return bits, colour_type, rows


# 3x2 pixels whose low bytes matter: no two differ in their high bytes only.
DEEP_PIXELS = [
    [(1000, 2000, 3000), (65535, 1, 300), (4660, 22136, 39612)],
    [(258, 515, 772), (0, 65280, 255), (40000, 30000, 20000)],
]


def deep_png(pixels: list[list[tuple[int, ...]]] = DEEP_PIXELS) -> bytes:
    colour_type = RGBA if len(pixels[0][0]) == 4 else RGB
    return png([[s for pixel in row for s in pixel] for row in pixels], 16, colour_type)


def process(data: bytes, pipeline: str) -> bytes:
    destination = io.BytesIO()
    process_image(io.BytesIO(data), destination, pipeline, SETTINGS)
    return destination.getvalue()


def test_16_bit_rgb_keeps_its_depth_in_png() -> None:
    bits, colour_type, rows = read_png_samples(process(deep_png(), "png"))
    assert (bits, colour_type, rows) == (16, RGB, DEEP_PIXELS)


def test_16_bit_rgba_keeps_its_depth_and_alpha() -> None:
    pixels = [[(*pixel, 1 + 999 * x) for x, pixel in enumerate(row)] for row in DEEP_PIXELS]
    assert read_png_samples(process(deep_png(pixels), "png")) == (16, RGBA, pixels)


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ("swap", [[(g, r, b) for r, g, b in row] for row in DEEP_PIXELS]),
        ("flip", DEEP_PIXELS[::-1]),
        ("flop", [row[::-1] for row in DEEP_PIXELS]),
        ("crop:2x1+1+1", [DEEP_PIXELS[1][1:]]),
        ("rotate:90", [[DEEP_PIXELS[1][x], DEEP_PIXELS[0][x]] for x in range(3)]),
    ],
)
def test_16_bit_rgb_steps_move_every_sample_exactly(
    pipeline: str, expected: list[list[tuple[int, ...]]]
) -> None:
    assert read_png_samples(process(deep_png(), pipeline))[2] == expected


def deep_heif(levels: list[list[tuple[int, ...]]], bits: int) -> bytes:
    """A lossless ``bits``-bit HEIF of these levels (0 .. 2**bits - 1), written by
    pillow-heif's encoder from 16-bit samples holding the levels in their high bits."""
    mode = "RGBA;16" if len(levels[0][0]) == 4 else "RGB;16"
    samples = [level << (16 - bits) for row in levels for pixel in row for level in pixel]
    data = struct.pack(f"<{len(samples)}H", *samples)
    heif = pillow_heif.from_bytes(mode=mode, size=(len(levels[0]), len(levels)), data=data)
    buffer = io.BytesIO()
    twelve = pillow_heif.options.SAVE_HDR_TO_12_BIT  # the encoder's choice: 10 or 12 bits
    pillow_heif.options.SAVE_HDR_TO_12_BIT = bits == 12
    try:
        # lossless, and in RGB itself (matrix 0): no rounding through YCbCr
        heif.save(buffer, quality=-1, chroma=444, matrix_coefficients=0)
    finally:
        pillow_heif.options.SAVE_HDR_TO_12_BIT = twelve
    return buffer.getvalue()


# 4x2 pixels of 10-bit levels, the darkest and the brightest among them.
HEIF_LEVELS = [
    [(0, 1, 2), (1023, 1023, 1023), (511, 512, 513), (100, 900, 300)],
    [(3, 1020, 7), (64, 128, 256), (1000, 10, 500), (777, 333, 55)],
]


@pytest.mark.parametrize("bits", [10, 12])
@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
def test_a_10_or_12_bit_heif_keeps_its_depth_in_png(bits: int, alpha: bool) -> None:
    # pi-heif's Pillow plugin gives 8 bits: 4 or 16 levels of each came out as one
    top = (1 << bits) - 1
    levels = [[tuple(v * top // 1023 for v in pixel) for pixel in row] for row in HEIF_LEVELS]
    if alpha:
        levels = [[(*pixel, top - 99 * x) for x, pixel in enumerate(row)] for row in levels]
    sixteen = [[tuple(round(v * 65535 / top) for v in pixel) for pixel in row] for row in levels]
    data = deep_heif(levels, bits)
    depth, colour_type, rows = read_png_samples(process(data, "flop"))
    assert (depth, colour_type) == (16, RGBA if alpha else RGB)
    assert rows == [row[::-1] for row in sixteen]  # white stays white: 65535
    # a step that works at 8 bits takes it scaled, not clipped (the white beside black)
    blurred = Image.open(io.BytesIO(process(data, "blur:0.1")))
    assert blurred.mode == ("RGBA" if alpha else "RGB")
    assert min(blurred.getpixel((1, 0))[:3]) >= 250 and max(blurred.getpixel((0, 0))[:3]) <= 5
    result = Image.open(io.BytesIO(process(data, "resize:8x4,jpeg:95")))
    assert result.size == (8, 4) and result.mode == "RGB"


def test_16_bit_grayscale_weighs_the_channels_at_16_bits() -> None:
    result = Image.open(io.BytesIO(process(deep_png(), "grayscale")))  # Pillow reads 16-bit grey
    assert result.mode == "I;16"
    for y, row in enumerate(DEEP_PIXELS):
        for x, (red, green, blue) in enumerate(row):
            expected = 0.299 * red + 0.587 * green + 0.114 * blue
            assert result.getpixel((x, y)) == pytest.approx(expected, abs=1)


def test_16_bit_resize_keeps_a_flat_colour_exact() -> None:
    flat = [[(4660, 22136, 39612)] * 8] * 6
    rows = read_png_samples(process(deep_png(flat), "resize:4x3"))[2]
    assert rows == [[(4660, 22136, 39612)] * 4] * 3


def test_16_bit_arbitrary_rotation_adds_a_16_bit_alpha() -> None:
    flat = [[(4660, 22136, 39612)] * 8] * 8
    _, colour_type, rows = read_png_samples(process(deep_png(flat), "rotate:45"))
    assert colour_type == RGBA
    assert rows[0][0][3] == 0
    centre = rows[len(rows) // 2][len(rows[0]) // 2]
    assert centre == pytest.approx((4660, 22136, 39612, 65535), abs=2)


def _sharpened_by_hand(rows: list[list[int]], x: int, y: int) -> int:
    """ImageFilter.SHARPEN's kernel (32 at the centre, -2 around it, over 16) at one inner
    sample, clipped to 16 bits."""
    around = sum(rows[y + dy][x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    total = 32 * rows[y][x] - 2 * (around - rows[y][x])
    return min(max(round(total / 16), 0), 65535)


def test_16_bit_sharpen_works_at_16_bits_on_the_colour_and_keeps_alpha() -> None:
    # samples apart by less than an 8-bit level, and edges that overshoot both ends
    width, height = 6, 5
    levels = [[(x * 37 + y * 11) % 5 * 60 + 30000 for x in range(width)] for y in range(height)]
    levels[2][2], levels[2][3] = 65535, 0
    pixels = [
        [(level, 65535 - level, 1000 + x, 100 * y + 7) for x, level in enumerate(row)]
        for y, row in enumerate(levels)
    ]
    bits, colour_type, rows = read_png_samples(process(deep_png(pixels), "sharpen"))
    assert (bits, colour_type) == (16, RGBA)
    for channel in range(3):
        written = [[pixel[channel] for pixel in row] for row in pixels]
        for y in range(1, height - 1):
            for x in range(1, width - 1):
                expected = _sharpened_by_hand(written, x, y)
                assert rows[y][x][channel] == pytest.approx(expected, abs=1), (channel, x, y)
    assert rows[2][2][0] == 65535 and rows[2][3][0] == 0, "overshoot clipped, not wrapped"
    assert [[pixel[3] for pixel in row] for row in rows] == [
        [pixel[3] for pixel in row] for row in pixels
    ]
    assert any(rows[y][x][0] % 257 for y in range(height) for x in range(width)), "not 8 bits"


@pytest.mark.parametrize("colour_type", [GREY, RGB])
def test_16_bit_sharpen_overshoot_is_clipped_before_the_next_step(colour_type: int) -> None:
    # an edge from white to black: the kernel overshoots past both ends
    levels = [[65535 if x < 4 else 0 for x in range(8)] for _ in range(8)]
    channels = CHANNELS[colour_type]
    rows = [[level for level in row for _ in range(channels)] for row in levels]
    data = png(rows, 16, colour_type)
    at_once = process(data, "sharpen,resize:4x4")
    one_by_one = process(process(data, "sharpen"), "resize:4x4")  # clipped when written
    if colour_type == GREY:  # written by Pillow (16-bit grey is a mode of its own)
        assert Image.open(io.BytesIO(at_once)).mode == "I;16"
        samples = [
            Image.open(io.BytesIO(out)).get_flattened_data() for out in (at_once, one_by_one)
        ]
    else:
        samples = [read_png_samples(out) for out in (at_once, one_by_one)]
    assert samples[0] == samples[1]


@pytest.mark.parametrize("pipeline", ["jpeg", "webp", "blur:1"])
def test_16_bit_rgb_is_scaled_to_8_bits_where_a_step_or_format_needs_it(pipeline: str) -> None:
    flat = [[(4660, 22136, 39612)] * 8] * 8
    result = Image.open(io.BytesIO(process(deep_png(flat), pipeline)))
    assert result.mode == "RGB"
    assert result.getpixel((4, 4)) == pytest.approx((18, 86, 154), abs=2)  # value / 257


def test_16_bit_rgb_keeps_its_colour_profile() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    iccp = (b"iCCP", b"sRGB\x00\x00" + zlib.compress(srgb))
    source = png([[s for pixel in row for s in pixel] for row in DEEP_PIXELS], 16, RGB, [iccp])
    result = process(source, "png")
    assert Image.open(io.BytesIO(result)).info.get("icc_profile") == srgb
    assert read_png_samples(result)[2] == DEEP_PIXELS


def tiff_16_bit(pixels: list[list[tuple[int, ...]]], byte_order: str) -> bytes:
    """An uncompressed one-strip 16-bit RGB(A) TIFF, written with struct."""
    height, width, channels = len(pixels), len(pixels[0]), len(pixels[0][0])
    samples = [sample for row in pixels for pixel in row for sample in pixel]
    data = struct.pack(f"{byte_order}{len(samples)}H", *samples)
    entries = [  # (tag, type 3 = SHORT or 4 = LONG, value); 258 and 273 point past the IFD
        (256, 3, width), (257, 3, height), (258, 3, 0), (259, 3, 1), (262, 3, 2), (273, 4, 0),
        (277, 3, channels), (278, 3, height), (279, 4, len(data)),
    ]  # fmt: skip
    if channels == 4:
        entries.append((338, 3, 2))  # an unassociated alpha
    bits_at = 8 + 2 + 12 * len(entries) + 4
    data_at = bits_at + 2 * channels
    ifd = struct.pack(f"{byte_order}H", len(entries))
    for tag, kind, value in entries:
        value = {258: bits_at, 273: data_at}.get(tag, value)
        count = channels if tag == 258 else 1
        inline_short = kind == 3 and count == 1  # else the field holds a LONG or an offset
        packed = struct.pack(
            f"{byte_order}{'HH' if inline_short else 'I'}", value, *[0] * inline_short
        )
        ifd += struct.pack(f"{byte_order}HHI", tag, kind, count) + packed
    head = (b"II*\x00" if byte_order == "<" else b"MM\x00*") + struct.pack(f"{byte_order}I", 8)
    bits = struct.pack(f"{byte_order}{channels}H", *([16] * channels))
    return head + ifd + struct.pack(f"{byte_order}I", 0) + bits + data


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("alpha", [False, True])
def test_16_bit_tiff_keeps_its_depth_in_png(byte_order: str, alpha: bool) -> None:
    pixels = [
        [(*pixel, 7 + 5000 * x)[: 4 if alpha else 3] for x, pixel in enumerate(row)]
        for row in DEEP_PIXELS
    ]
    bits, colour_type, rows = read_png_samples(process(tiff_16_bit(pixels, byte_order), "png"))
    assert (bits, colour_type, rows) == (16, RGBA if alpha else RGB, pixels)


def test_a_skipped_chunk_is_said_in_the_task_status(config: Config) -> None:
    """Worker, master and database in-process: the warning reaches /status (its error field)."""
    system = master_side(config)
    master_api = testing.TestClient(system.master_app)
    data = png([[0, 50, 100, 250]], 8, GREY, [_UNKNOWN_COMPRESSION_ICCP])
    task_id = master_api.simulate_post("/new", body=data).text
    process = timed_processor(SETTINGS, TaskMetrics())
    loop = TaskLoop(
        system.master, system.storage, process, ImageRejected, 0, 5, 5, threading.Event()
    )
    loop.handle(system.master.claim(0, 5))
    status = master_api.simulate_get("/status", params={"id": task_id}).json
    assert status["stateName"] == "finished"
    assert status["error"] == (
        "skipped the unreadable optional iCCP chunk: Unknown compression method 5 in iCCP chunk"
    )


# --- CMYK through its colour profile ---------------------------------------------------------


def _mean_difference(one: Image.Image, other: Image.Image) -> float:
    histogram = ImageChops.difference(one, other).convert("L").histogram()
    return sum(level * count for level, count in enumerate(histogram)) / sum(histogram)


def test_a_cmyk_jpeg_is_converted_through_its_embedded_profile() -> None:
    profile = toy_cmyk_profile()
    inks = Image.merge(
        "CMYK",
        [Image.linear_gradient("L").resize((32, 32)).rotate(angle) for angle in (0, 90, 180, 270)],
    )
    # Pillow writes CMYK JPEGs Adobe-style (inverted) and reads them back the same way.
    data = encode(inks, "JPEG", quality=100, icc_profile=profile).getvalue()
    assert b"Adobe" in data
    decoded = Image.open(io.BytesIO(data)).convert("CMYK")
    expected = ImageCms.profileToProfile(
        decoded,
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    assert _mean_difference(decoded.convert("RGB"), expected) > 10  # the plain formula is far off
    result, _ = run(data, "png")
    assert _mean_difference(result.convert("RGB"), expected) < 1
    assert "icc_profile" not in result.info  # the CMYK profile does not describe RGB pixels


# FOGRA39's own measurements (FOGRA39L.ti3: ink percentages, Lab D50) of the patches checked,
# independent of the profile made from them and of LittleCMS.
FOGRA39_PAPER = (95.0, 0.0, -2.0)  # 0/0/0/0
FOGRA39_DARKEST = (7.88, 0.0, 0.0)  # 100/100/0/100, the darkest patch, made neutral as LCMS does
FOGRA39_PATCHES = {
    "cyan": ((100, 0, 0, 0), (55.0, -37.0, -50.0)),
    "magenta": ((0, 100, 0, 0), (48.0, 74.0, -3.0)),
    "yellow": ((0, 0, 100, 0), (89.0, -5.0, 93.0)),
    "black": ((0, 0, 0, 100), (16.0, 0.0, 0.0)),
    "paper": ((0, 0, 0, 0), FOGRA39_PAPER),
    "half black": ((0, 0, 0, 50), (61.82, 0.0, -1.16)),
    "grey of inks": ((40, 40, 40, 0), (61.53, 5.42, 3.75)),
}
# Levels per channel (2 seen): the shipped low-resolution profile fits the measurements within
# dE76 1.6, about 3 sRGB levels at most; LittleCMS finds the black point from the profile rather
# than from the darkest patch; the JPEG rounds. Pillow's plain formula misses by up to 129.
PRESS_TOLERANCE = 3
PATCH = 16  # pixels: two JPEG blocks, so each patch's centre is flat


def _patches_sheet() -> Image.Image:
    sheet = Image.new("CMYK", (PATCH * len(FOGRA39_PATCHES), PATCH))
    for index, (inks, _) in enumerate(FOGRA39_PATCHES.values()):
        ink_levels = tuple(round(percent * 255 / 100) for percent in inks)
        sheet.paste(ink_levels, (index * PATCH, 0, (index + 1) * PATCH, PATCH))
    return sheet


def _patches_jpeg(**options: object) -> bytes:
    """The patches side by side in one CMYK JPEG (Pillow writes it Adobe-style, inverted)."""
    return encode(_patches_sheet(), "JPEG", quality=100, subsampling=0, **options).getvalue()


def _adobe_ycck_jpeg(inks: Image.Image, transform: int = 2) -> bytes:
    """``inks`` as an Adobe YCCK JPEG (what Photoshop writes for CMYK), which Pillow cannot
    write: the C, M, Y inks taken as R, G, B to the JPEG standard's YCbCr (a decoder turns
    YCC to RGB and stores 255 minus each, Adobe's inverted inks), K inverted, all written as
    if CMYK, then the Adobe marker's transform flag set from 0 (none) to ``transform``."""
    cyan, magenta, yellow, black = inks.split()
    ycc = Image.merge("RGB", (cyan, magenta, yellow)).convert("YCbCr").split()
    # Pillow writes a CMYK image's samples inverted, Adobe-style: invert them here first
    samples = Image.merge("CMYK", [*(ImageChops.invert(band) for band in ycc), black])
    data = bytearray(encode(samples, "JPEG", quality=100, subsampling=0).getvalue())
    adobe = data.index(b"\xff\xee") + 4  # APP14: marker, length, then "Adobe"
    assert data[adobe : adobe + 5] == b"Adobe" and data[adobe + 11] == 0
    data[adobe + 11] = transform  # after "Adobe": version, flags0, flags1 (two bytes each)
    return bytes(data)


def _patch_colours(image: Image.Image) -> dict[str, tuple[int, ...]]:
    rgb = image.convert("RGB")
    return {
        name: rgb.getpixel((index * PATCH + PATCH // 2, PATCH // 2))
        for index, name in enumerate(FOGRA39_PATCHES)
    }


def _farthest(colour: tuple[int, ...], expected: tuple[int, ...]) -> int:
    return max(abs(one - other) for one, other in zip(colour, expected, strict=True))


def _patches_tiff() -> bytes:
    return encode(_patches_sheet(), "TIFF").getvalue()


@pytest.mark.parametrize("make", [_patches_jpeg, _patches_tiff], ids=["jpeg", "tiff"])
def test_cmyk_without_a_profile_shows_fogra39_press_colour(make) -> None:
    data = make()
    assert (
        b"ICC_PROFILE" not in data and Image.open(io.BytesIO(data)).info.get("icc_profile") is None
    )
    expected = {
        name: press_lab_to_srgb(lab, FOGRA39_PAPER, FOGRA39_DARKEST)
        for name, (_, lab) in FOGRA39_PATCHES.items()
    }
    result, _ = run(data, "png")
    colours = _patch_colours(result)
    misses = {
        name: (colours[name], expected[name])
        for name in FOGRA39_PATCHES
        if _farthest(colours[name], expected[name]) > PRESS_TOLERANCE
    }
    assert not misses
    # Pillow's plain formula makes printed cyan (0, 159, 227) the screen's (0, 255, 255).
    plain = _patch_colours(Image.open(io.BytesIO(data)))
    assert _farthest(plain["cyan"], expected["cyan"]) > 60
    assert "icc_profile" not in result.info


def test_a_ycck_jpeg_without_a_profile_shows_fogra39_press_colour_too() -> None:
    data = _adobe_ycck_jpeg(_patches_sheet())
    assert Image.open(io.BytesIO(data)).info["adobe_transform"] == 2
    result, _ = run(data, "png")
    cmyk_result, _ = run(_patches_jpeg(), "png")
    colours, cmyk_colours = _patch_colours(result), _patch_colours(cmyk_result)
    misses = {
        name: (colours[name], cmyk_colours[name])
        for name in FOGRA39_PATCHES
        if _farthest(colours[name], cmyk_colours[name]) > 2  # YCC's rounding, a level or two
    }
    assert not misses
    # the same samples taken for inks (the transform flag cleared) are far off
    as_inks, _ = run(_adobe_ycck_jpeg(_patches_sheet(), transform=0), "png")
    assert _farthest(_patch_colours(as_inks)["cyan"], cmyk_colours["cyan"]) > 60


def test_an_embedded_cmyk_profile_wins_over_the_standard_one() -> None:
    profile = toy_cmyk_profile()
    data = _patches_jpeg(icc_profile=profile)
    toy = ImageCms.profileToProfile(
        Image.open(io.BytesIO(data)).convert("CMYK"),
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    without_profile, _ = run(_patches_jpeg(), "png")
    assert _mean_difference(without_profile.convert("RGB"), toy) > 10  # the two differ plainly
    result, _ = run(data, "png")
    assert _mean_difference(result.convert("RGB"), toy) < 1


def test_a_cmyk_jpeg_whose_profile_is_broken_shows_press_colour_too() -> None:
    broken = toy_cmyk_profile()[:200]  # the header and part of the tag table
    with_broken, _ = run(_patches_jpeg(icc_profile=broken), "png")
    without_profile, _ = run(_patches_jpeg(), "png")
    assert _mean_difference(with_broken.convert("RGB"), without_profile.convert("RGB")) < 1
