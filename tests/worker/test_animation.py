"""Animated GIF, WebP and APNG: kept through per-frame steps into PNG (APNG) and WebP results,
the first frame otherwise, with the frame limit and the frames x pixels budget."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import ExifTags, Image, ImageSequence

from darkroom.contract.pipeline import OutputFormat, parse_pipeline
from darkroom.core.config import Config
from darkroom.worker.animation import PER_FRAME_STEPS, judge_animation
from darkroom.worker.codec import (
    FrameTiming,
    ImageRejected,
    Metadata,
    ProcessingSettings,
    encode_frames,
    open_image,
)
from darkroom.worker.operations import PIXEL_STEPS, process_image
from support.processing import SETTINGS

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
DURATIONS = [100, 200, 300]


def _frames(size: tuple[int, int] = (40, 30)) -> list[Image.Image]:
    """Three flat frames, each with a white 5x5 top-left corner to follow the geometry."""
    frames = []
    for colour in COLOURS:
        frame = Image.new("RGB", size, colour)
        frame.paste((255, 255, 255), (0, 0, 5, 5))
        frames.append(frame)
    return frames


def _animation(fmt: str, frames: list[Image.Image] | None = None, **options: object) -> bytes:
    first, *rest = frames or _frames()
    buffer = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    first.save(
        buffer,
        fmt,
        save_all=True,
        append_images=rest,
        duration=DURATIONS[: 1 + len(rest)],
        loop=0,
        **extra,
        **options,
    )
    return buffer.getvalue()


def _process(
    data: bytes, pipeline: str, settings: ProcessingSettings = SETTINGS
) -> tuple[Image.Image, str, list[str]]:
    destination, notes = io.BytesIO(), []
    media_type = process_image(io.BytesIO(data), destination, pipeline, settings, notes=notes)
    destination.seek(0)
    return Image.open(destination), media_type, notes


def _colours(result: Image.Image, at: tuple[int, int]) -> list[tuple[int, ...]]:
    return [frame.convert("RGB").getpixel(at) for frame in ImageSequence.Iterator(result)]


def _durations(result: Image.Image) -> list[int]:
    found = []
    for index in range(result.n_frames):
        result.seek(index)
        result.load()  # WebP sets the duration while loading
        found.append(result.info["duration"])
    return found


def _close(found: list[tuple[int, ...]], expected: list[tuple[int, ...]], tolerance: int) -> bool:
    return all(
        abs(a - b) <= tolerance
        for pixel, wanted in zip(found, expected, strict=True)
        for a, b in zip(pixel, wanted, strict=True)
    )


@pytest.mark.parametrize("source_format", ["GIF", "WEBP", "PNG"])
@pytest.mark.parametrize(("output", "result_format"), [("png", "PNG"), ("webp", "WEBP")])
def test_an_animation_resized_stays_animated(
    source_format: str, output: str, result_format: str
) -> None:
    result, media_type, notes = _process(
        _animation(source_format), f"resize:20x15,flop,{output}" + (":100" * (output == "webp"))
    )
    assert media_type == f"image/{output}"
    assert (result.format, result.size, result.n_frames) == (result_format, (20, 15), 3)
    assert getattr(result, "is_animated", False)
    assert _durations(result) == DURATIONS
    assert result.info["loop"] == 0
    # Mirrored: the white corner is now top right; each frame keeps its own colour.
    assert _close(_colours(result, (10, 10)), COLOURS, tolerance=12)
    assert _close(_colours(result, (19, 0)), [(255, 255, 255)] * 3, tolerance=12)
    assert notes == ["animation kept: 3 frames"]


def test_every_per_frame_step_keeps_the_animation() -> None:
    steps = "swap,grayscale,resize:30x30,thumbnail:20,crop:10x10+2+2,rotate:90,flip,flop,blur:1"
    result, _, notes = _process(_animation("GIF"), steps + ",sharpen")
    assert (result.n_frames, result.size) == (3, (10, 10))
    assert notes == ["animation kept: 3 frames"]


def test_a_smart_crop_chooses_one_window_for_every_frame() -> None:
    frames = [Image.new("RGB", (80, 20), colour) for colour in COLOURS]
    for x in range(0, 12, 2):  # detail at the right of the first frame only...
        frames[0].paste((255, 255, 255), (68 + x, 0, 69 + x, 20))
        frames[1].paste((255, 255, 255), (x, 0, x + 1, 20))  # ...and the left of the second
    result, _, notes = _process(_animation("PNG", frames), "resize:20x20:smart,watermark:Hi")
    assert (result.n_frames, result.size) == (3, (20, 20))
    assert notes == ["animation kept: 3 frames"]
    result.seek(1)
    # the second frame is cropped where the first one's detail was: its own is left out
    assert result.convert("RGB").crop((0, 0, 20, 10)).getextrema()[0] == (0, 0)  # no white


def test_the_per_frame_steps_are_named_among_the_grammars() -> None:
    assert set(PER_FRAME_STEPS) <= set(PIXEL_STEPS)


@pytest.mark.parametrize("output", ["jpeg", "avif"])
def test_a_still_format_gets_the_first_frame(output: str) -> None:
    result, media_type, notes = _process(_animation("GIF"), f"resize:20x15,{output}:95")
    assert media_type == f"image/{output}"
    assert getattr(result, "n_frames", 1) == 1
    assert _close(_colours(result, (10, 10)), COLOURS[:1], tolerance=30)
    assert notes == [
        f"first frame only of 3: {output} does not hold an animation (png or webp does)"
    ]


def test_more_frames_than_the_limit_gives_the_first_frame() -> None:
    result, _, notes = _process(_animation("GIF"), "png", ProcessingSettings(max_frames=2))
    assert getattr(result, "n_frames", 1) == 1
    assert notes == ["first frame only of 3: more than the limit of 2 frames"]


def test_frames_times_pixels_count_against_the_pixel_budget() -> None:
    fits = ProcessingSettings(max_image_pixels=3 * 40 * 30)
    assert _process(_animation("GIF"), "png", fits)[0].n_frames == 3
    over = ProcessingSettings(max_image_pixels=3 * 40 * 30 - 1)
    result, _, notes = _process(_animation("GIF"), "png", over)
    assert getattr(result, "n_frames", 1) == 1
    assert notes == [
        "first frame only of 3: 3 frames of 40x30 are 3600 pixels, more than the limit of 3599"
    ]


def test_an_animation_grown_past_the_budget_is_refused() -> None:
    settings = ProcessingSettings(max_image_pixels=10_000)
    with pytest.raises(ImageRejected, match=r"makes 3 frames of 80x60, 14400 pixels, more than"):
        _process(_animation("GIF"), "resize:80x60", settings)


def test_a_still_image_has_no_note() -> None:
    _, _, notes = _process(_animation("GIF", _frames()[:1]), "png")
    assert notes == []


def test_gif_transparency_and_mixed_frame_modes() -> None:
    # A palette GIF with a transparent colour: Pillow gives its first frame with a palette, the
    # next in RGB or RGBA; the second frame is half transparent.
    first = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    first.putpixel((19, 19), (0, 0, 0, 0))
    second = Image.new("RGBA", (20, 20), (0, 0, 255, 255))
    second.paste((0, 0, 0, 0), (0, 0, 10, 20))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=50, disposal=2)
    result, _, _ = _process(buffer.getvalue(), "png")
    assert result.n_frames == 2
    result.seek(1)
    assert result.convert("RGBA").getpixel((15, 5)) == (0, 0, 255, 255)
    assert result.convert("RGBA").getpixel((5, 5))[3] == 0


def test_a_gif_that_does_not_loop_plays_once() -> None:
    frames = _frames()
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    result, _, _ = _process(buffer.getvalue(), "webp")
    assert result.n_frames == 3 and result.info["loop"] == 1


def test_the_orientation_of_an_animated_webp_turns_every_frame() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    result, _, _ = _process(_animation("WEBP", exif=exif.tobytes()), "png")
    assert (result.n_frames, result.size) == (3, (30, 40))
    # The white top-left corner turned a quarter clockwise: top right.
    assert _close(_colours(result, (29, 0)), [(255, 255, 255)] * 3, tolerance=2)


def _apng_with_default_image(frames: list[Image.Image] | None = None) -> bytes:
    """An APNG whose default image (dark grey) is not one of its frames."""
    buffer = io.BytesIO()
    still = Image.new("RGB", (40, 30), (9, 9, 9))
    frames = _frames() if frames is None else frames
    still.save(buffer, "PNG", save_all=True, append_images=frames, default_image=True, loop=0)
    return buffer.getvalue()


def _without_chunks(data: bytes, kind: bytes) -> bytes:
    """A PNG's bytes with every chunk of ``kind`` left out."""
    kept, at = [data[:8]], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 12 + length
        if data[at + 4 : at + 8] != kind:
            kept.append(data[at:end])
        at = end
    return b"".join(kept)


def test_an_apngs_default_image_is_not_a_frame() -> None:
    source = open_image(io.BytesIO(_apng_with_default_image()), SETTINGS)
    assert source.frame_count() == 3
    result, _, _ = _process(_apng_with_default_image(), "png")
    assert _colours(result, (20, 20)) == COLOURS


def test_a_still_format_gets_an_apngs_first_frame_not_its_default_image() -> None:
    # As for GIF and WebP, and as a viewer that animates shows it; the default image is for
    # viewers that do not know APNG
    result, _, notes = _process(_apng_with_default_image(), "jpeg:95")
    assert _close(_colours(result, (20, 20)), COLOURS[:1], tolerance=3)
    assert notes == ["first frame only of 3: jpeg does not hold an animation (png or webp does)"]


def test_an_apng_of_one_frame_beside_its_default_image_gives_that_frame() -> None:
    result, _, notes = _process(_apng_with_default_image(_frames()[1:2]), "flop")
    assert _colours(result, (20, 20)) == COLOURS[1:2]
    assert notes == []


@pytest.mark.parametrize("pipeline", ["flop", "jpeg:95"])
def test_an_apng_whose_frames_cannot_be_read_gives_its_default_image(pipeline: str) -> None:
    # The APNG specification: a decoder meeting an error shows the default image instead.
    broken = _without_chunks(_apng_with_default_image(), b"fdAT")
    result, _, notes = _process(broken, pipeline)
    assert getattr(result, "n_frames", 1) == 1
    assert _close(_colours(result, (20, 20)), [(9, 9, 9)], tolerance=3)
    assert notes == ["still image only: its frames cannot be read (APNG missing frame data)"]


def test_an_apng_whose_later_frames_cannot_be_read_gives_its_first_frame() -> None:
    broken = _without_chunks(_animation("PNG"), b"fdAT")  # its first frame is its IDAT
    result, _, notes = _process(broken, "flop")
    assert getattr(result, "n_frames", 1) == 1
    assert _colours(result, (20, 20)) == COLOURS[:1]
    assert notes == ["still image only: its frames cannot be read (APNG missing frame data)"]


def test_a_gif_whose_frames_cannot_be_read_still_fails() -> None:
    # GIF has no still image to fall back on: a frame cut short is an error, as before
    data = _animation("GIF")
    with pytest.raises(ImageRejected, match="cannot decode the image"):
        _process(data[: len(data) - 40], "flop")


def _gif(screen: tuple[int, int], frames: list[tuple[int, int, int]]) -> bytes:
    """A GIF made byte by byte: a black and red palette, then each frame (width, height, colour
    index) at the top left, whatever the logical screen's size; LZW with a clear code before
    every pixel, so every code stays 3 bits."""
    data = bytearray(b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00")
    data += b"\x00\x00\x00\xff\x00\x00"  # the palette: black, red
    data += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for width, height, colour in frames:
        data += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # shown 100 ms
        data += b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00\x02"
        codes = [code for _ in range(width * height) for code in (4, colour)] + [5]
        bits = sum(code << (3 * index) for index, code in enumerate(codes))
        packed = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
        for at in range(0, len(packed), 255):
            block = packed[at : at + 255]
            data += bytes([len(block)]) + block
        data += b"\x00"
    return bytes(data + b"\x3b")


@pytest.mark.parametrize("output", ["png", "webp:100"])
def test_frames_past_a_gifs_logical_screen_make_one_canvas(output: str) -> None:
    # Pillow grows the canvas for a frame larger than the screen; the frames before it are put
    # on the grown canvas (WebP's writer refused frames of two sizes)
    data = _gif((4, 4), [(4, 4, 1), (6, 5, 0)])
    assert Image.open(io.BytesIO(data)).size == (4, 4)  # the file as made: a 4x4 screen
    result, _, notes = _process(data, output)
    assert notes == ["animation kept: 2 frames"]
    frames = [frame.convert("RGBA") for frame in ImageSequence.Iterator(result)]
    assert [frame.size for frame in frames] == [(6, 5), (6, 5)]
    inside = [frame.getpixel((1, 1)) for frame in frames]
    assert _close(inside, [(255, 0, 0, 255), (0, 0, 0, 255)], tolerance=2)
    past = [frame.getpixel((5, 4)) for frame in frames]
    # nothing past the screen at first (Pillow reads an animated WebP as RGB unless its
    # header's alpha flag is set, which libwebp leaves to the last frames: PNG tells)
    assert past[1] == (0, 0, 0, 255) and (output != "png" or past[0] == (0, 0, 0, 0))


def test_a_still_format_gets_a_frame_of_the_file_it_came_from() -> None:
    # The still result of an animation whose first frame needs no conversion (an APNG in L
    # whose default image is not a frame) is written detached from the file: Pillow's AVIF
    # writer walked the file's frames and failed
    frames = [Image.new("L", (8, 8), level) for level in (50, 150, 250)]
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 9).save(
        buffer, "PNG", save_all=True, append_images=frames, default_image=True
    )
    result, media_type, _ = _process(buffer.getvalue(), "avif")
    assert media_type == "image/avif"
    assert result.convert("L").getpixel((4, 4)) == pytest.approx(50, abs=3)


def test_judged_without_decoding() -> None:
    source = open_image(io.BytesIO(_animation("PNG")), SETTINGS)
    verdict = judge_animation(source, parse_pipeline("flip", SETTINGS), SETTINGS)
    assert verdict.keep and verdict.note == "animation kept: 3 frames"


def test_the_frame_limit_is_configured() -> None:
    config = Config.from_env({"DARKROOM_MAX_FRAMES": "7"})
    assert config.settings_for(ProcessingSettings).max_frames == 7
    assert Config().max_frames == ProcessingSettings().max_frames
    with pytest.raises(ValueError, match="max_frames must be positive"):
        Config(max_frames=0)


@pytest.mark.parametrize("output", ["png", "webp"])
def test_frames_of_different_modes_are_written_in_one(output: str) -> None:
    frames = [
        Image.new("L", (4, 4), 200),
        Image.new("RGB", (4, 4), (0, 0, 255)),
        Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
    ]
    destination = io.BytesIO()
    quality = OutputFormat(output, 100 if output == "webp" else None)  # type: ignore[arg-type]
    encode_frames(frames, FrameTiming((10, 20, 30), 0), Metadata(), quality, destination, SETTINGS)
    destination.seek(0)
    result = Image.open(destination)
    assert result.n_frames == 3
    colours = [frame.convert("RGBA").getpixel((1, 1)) for frame in ImageSequence.Iterator(result)]
    assert colours[0][:3] == pytest.approx((200, 200, 200), abs=3)
    assert colours[1] == pytest.approx((0, 0, 255, 255), abs=3)
    assert colours[2][3] == 0
