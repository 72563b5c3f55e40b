"""Tests for darkroom.worker.operations: every operation on pixels, and process_image."""

from __future__ import annotations

import io
import threading
import typing
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat

from darkroom.contract import pipeline as grammar
from darkroom.contract.pipeline import DEFAULT_PIPELINE
from darkroom.worker import deep
from darkroom.worker.operations import (
    PIXEL_STEPS,
    ImageRejected,
    ProcessingSettings,
    apply,
    output_size,
    plan_sizes,
    process_image,
    use_pixel_limit,
)
from support.images import png_bomb
from support.processing import SETTINGS, encode, red_at, rgb_marked, run

# --- swap, grayscale -------------------------------------------------------------------------


def test_swap_exchanges_red_and_green_and_keeps_alpha() -> None:
    result, media_type = run(Image.new("RGBA", (3, 2), (10, 20, 30, 40)), "swap")
    assert media_type == "image/png"
    assert result.mode == "RGBA"
    assert result.getpixel((2, 1)) == (20, 10, 30, 40)


def test_swap_on_rgb() -> None:
    result, _ = run(Image.new("RGB", (2, 2), (1, 2, 3)), "swap")
    assert (result.mode, result.getpixel((0, 0))) == ("RGB", (2, 1, 3))


@pytest.mark.parametrize("pipeline", [None, "", "  "])
def test_empty_pipeline_means_swap(pipeline: str | None) -> None:
    assert DEFAULT_PIPELINE == "swap"
    result, _ = run(Image.new("RGB", (2, 2), (1, 2, 3)), pipeline)
    assert result.getpixel((0, 0)) == (2, 1, 3)


def test_grayscale_keeps_alpha() -> None:
    result, _ = run(Image.new("RGBA", (2, 2), (200, 100, 50, 77)), "grayscale")
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert result.mode == "LA"
    assert result.getpixel((0, 0)) == pytest.approx((luma, 77), abs=1)


def test_grey_with_alpha_stays_grey_with_alpha() -> None:
    result, _ = run(Image.new("LA", (2, 2), (90, 30)), "swap,grayscale")
    assert (result.mode, result.getpixel((1, 1))) == ("LA", (90, 30))


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "pipeline", "expected"),
    [
        ((400, 200), "resize:100x100", (100, 50)),
        ((10, 5), "resize:40x40", (40, 20)),  # fits by enlarging
        ((1000, 1), "resize:10x10", (10, 1)),  # never rounds a side to 0
        ((400, 200), "resize:100x100:fill", (100, 100)),
        ((30, 90), "resize:64x32:fill", (64, 32)),
        ((400, 200), "resize:100x100:smart", (100, 100)),
        ((30, 90), "resize:64x32:smart", (64, 32)),
        ((7, 5), "watermark:Darkroom:center", (7, 5)),
        ((400, 200), "thumbnail:50", (50, 25)),
        ((20, 10), "thumbnail:50", (20, 10)),  # never enlarges
        ((100, 50), "crop:20x10+5+5", (20, 10)),
        ((30, 20), "rotate:90", (20, 30)),
        ((30, 20), "rotate:180", (30, 20)),
        ((30, 20), "rotate:-90", (20, 30)),
        ((30, 20), "rotate:0", (30, 20)),
    ],
)
def test_output_size(size: tuple[int, int], pipeline: str, expected: tuple[int, int]) -> None:
    result, _ = run(Image.new("RGB", size), pipeline)
    assert result.size == expected


def test_fill_crops_the_centre() -> None:
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    image.paste((255, 0, 0), (10, 0, 20, 10))  # red middle third
    result, _ = run(image, "resize:10x10:fill,png")
    assert result.getpixel((5, 5)) == (255, 0, 0)


def test_crop_takes_the_geometry_rectangle() -> None:
    result, _ = run(rgb_marked((100, 50), (5, 7)), "crop:20x10+5+7,png")
    assert red_at(result) == (0, 0)


def test_crop_outside_the_image_is_rejected() -> None:
    with pytest.raises(ImageRejected, match=r"crop:20x10\+90\+0 lies outside the 100x50 image"):
        run(Image.new("RGB", (100, 50)), "crop:20x10+90+0")


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ("rotate:90", (2, 0)),  # clockwise: top-left goes to top-right
        ("rotate:270", (0, 3)),
        ("rotate:180", (3, 2)),
        ("flip", (0, 2)),
        ("flop", (3, 0)),
    ],
)
def test_pixel_moves(pipeline: str, expected: tuple[int, int]) -> None:
    result, _ = run(rgb_marked((4, 3), (0, 0)), pipeline + ",png")
    assert red_at(result) == expected


def test_arbitrary_rotation_grows_the_canvas_with_transparent_corners() -> None:
    result, _ = run(Image.new("RGB", (40, 40), (0, 0, 255)), "rotate:45")
    assert result.mode == "RGBA"
    assert result.width == result.height == pytest.approx(57, abs=1)
    assert result.getpixel((0, 0))[3] == 0
    assert result.getpixel((28, 28)) == (0, 0, 255, 255)


# --- filters ---------------------------------------------------------------------------------


def test_blur_does_not_bleed_transparent_colour() -> None:
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # invisible red
    image.paste((0, 0, 255, 255), (10, 0, 20, 20))
    result, _ = run(image, "blur:3,png")
    edge = result.getpixel((9, 10))
    assert 0 < edge[3] < 255
    assert edge[0] <= 2  # premultiplied: no red appears at the edge


def test_blur_softens_an_edge() -> None:
    image = Image.new("L", (20, 20), 0)
    image.paste(255, (10, 0, 20, 20))
    result, _ = run(image, "blur:2")
    assert 0 < result.getpixel((9, 10)) < 255


def test_sharpen_keeps_alpha_untouched() -> None:
    image = Image.new("RGBA", (8, 8), (100, 100, 100, 255))
    image.putpixel((4, 4), (200, 200, 200, 10))
    result, _ = run(image, "sharpen")
    assert result.getchannel("A").tobytes() == image.getchannel("A").tobytes()
    assert result.getpixel((3, 4))[0] < 100  # the neighbour of a bright pixel is darkened


# --- processing -----------------------------------------------------------------------------


# --- smart crop ------------------------------------------------------------------------------


def detailed_corner(size: tuple[int, int], corner: tuple[int, int]) -> Image.Image:
    """A flat grey image with a 24x24 checkerboard whose top-left corner is ``corner``."""
    image = Image.new("RGB", size, (128, 128, 128))
    for y in range(0, 24, 4):
        for x in range(0, 24, 4):
            if (x + y) // 4 % 2:
                left, top = corner[0] + x, corner[1] + y
                image.paste((255, 40, 0), (left, top, left + 4, top + 4))
    return image


def spread(image: Image.Image) -> int:
    """The widest range of any channel: 0 for a flat image."""
    return max(high - low for low, high in image.convert("RGB").getextrema())


@pytest.mark.parametrize(
    ("size", "corner", "pipeline"),
    [
        ((400, 100), (370, 70), "resize:100x100"),  # wide: the window slides across
        ((100, 400), (0, 0), "resize:100x100"),  # tall: it slides down
        ((2000, 500), (10, 400), "resize:120x120"),  # large: measured on a small copy
    ],
)
def test_smart_crop_keeps_the_detail_the_centre_crop_misses(
    size: tuple[int, int], corner: tuple[int, int], pipeline: str
) -> None:
    image = detailed_corner(size, corner)
    smart, _ = run(image, pipeline + ":smart")
    centre, _ = run(image, pipeline + ":fill")
    assert smart.size == centre.size
    assert spread(centre) == 0
    assert spread(smart) > 50  # the checkerboard, if blurred by the downscale


def test_smart_crop_of_an_image_without_detail_is_the_centre_crop() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # the middle third: flat, edges at its sides
    smart, _ = run(image, "resize:10x10:smart")
    assert smart.getpixel((5, 5)) == (255, 0, 0)


def test_smart_crop_of_16_bit_colour_crops_every_band_at_one_window() -> None:
    grey = detailed_corner((400, 100), (370, 70)).convert("L").point(lambda v: v * 257, "I")
    flat = Image.new("I", (400, 100), 30_000)  # no detail: alone it would pick the centre
    image = deep.DeepImage("RGB", (grey, flat, grey))
    operation = grammar.parse_pipeline("resize:100x100:smart", SETTINGS).operations[0]
    result = apply(operation, image)
    assert isinstance(result, deep.DeepImage)
    assert result.size == (100, 100)
    red = result.bands[0]
    low, high = red.getextrema()
    assert high - low > 5_000  # the detail came through; the centre is flat


# --- watermark -------------------------------------------------------------------------------

# Which quarter of the image each position draws in: (left, top, right, bottom) of 200x100.
QUARTERS = {
    "top-left": (0, 0, 100, 50),
    "top-right": (100, 0, 200, 50),
    "bottom-left": (0, 50, 100, 100),
    "bottom-right": (100, 50, 200, 100),
    "center": (50, 25, 150, 75),
}


@pytest.mark.parametrize("position", list(QUARTERS))
def test_watermark_changes_pixels_in_its_position_only(position: str) -> None:
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    result, _ = run(image, f"watermark:Dark:{position}:1")
    assert result.size == image.size
    changed = ImageChops.difference(result, image).getbbox()
    assert changed is not None
    left, top, right, bottom = QUARTERS[position]
    assert left <= changed[0] and top <= changed[1]
    assert changed[2] <= right and changed[3] <= bottom


def test_watermark_defaults_to_the_bottom_right() -> None:
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    result, _ = run(image, "watermark:Dark")
    changed = ImageChops.difference(result, image).getbbox()
    assert changed is not None and changed[0] >= 100 and changed[1] >= 50


def test_watermark_opacity_sets_the_blend() -> None:
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    faint, _ = run(image, "watermark:Darkroom:center:0.2")
    strong, _ = run(image, "watermark:Darkroom:center:0.9")
    faint_change = ImageStat.Stat(ImageChops.difference(faint, image)).extrema
    strong_change = ImageStat.Stat(ImageChops.difference(strong, image)).extrema
    assert 0 < faint_change[0][1] < strong_change[0][1]  # the red channel: white text on blue
    assert faint_change[0][1] <= round(255 * 0.2) + 1


def test_watermark_on_alpha_keeps_alpha_and_shows_on_transparency() -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 255, 0))
    image.paste((0, 0, 255, 120), (0, 0, 100, 100))  # left half half-opaque
    result, _ = run(image, "watermark:Darkroom:bottom-right:1")
    assert result.mode == "RGBA"
    alpha, before = result.getchannel("A"), image.getchannel("A")
    assert alpha.crop((0, 0, 100, 100)).getextrema() == (120, 120)  # untouched
    assert alpha.crop((100, 0, 200, 50)).getextrema() == (0, 0)
    assert ImageChops.difference(alpha, before).getbbox() is not None  # the text is seen


@pytest.mark.parametrize("mode", ["L", "LA", "I"])
def test_watermark_on_grey(mode: str) -> None:
    image = Image.new(mode, (60, 40))
    result = apply(grammar.Watermark("Hi", "top-left", 100), image)
    assert result.mode == {"I": "L"}.get(mode, mode)  # drawn at 8 bits
    changed = result.getbbox()
    assert changed is not None and changed[2] <= 30 and changed[3] <= 20


def test_watermark_on_16_bit_colour_is_drawn_at_8_bits() -> None:
    band = Image.new("I", (60, 40), 0)
    result = apply(grammar.Watermark("Hi", "bottom-left", 100), deep.DeepImage("RGB", (band,) * 3))
    assert isinstance(result, Image.Image) and result.mode == "RGB"
    changed = result.getbbox()
    assert changed is not None and changed[2] <= 30 and changed[1] >= 20


def test_a_long_watermark_on_a_tiny_image_fits_inside_it() -> None:
    image = Image.new("RGB", (12, 5), (0, 0, 255))
    result, _ = run(image, "watermark:" + "W" * 40)
    assert result.size == (12, 5)


def test_the_watermark_font_ships_with_its_licence() -> None:
    fonts = resources.files("darkroom.worker") / "fonts"
    assert (fonts / "DejaVuSans.ttf").is_file()
    assert "Bitstream Vera" in (fonts / "DejaVuSans-LICENSE").read_text()


def test_every_operation_of_the_grammar_has_a_pixel_step() -> None:
    assert set(PIXEL_STEPS) == set(typing.get_args(grammar.Operation))


def test_the_settings_are_the_pipelines_limits() -> None:
    with pytest.raises(ImageRejected, match=r"too many steps: 3 \(at most 2\)"):
        run(Image.new("RGB", (2, 2)), "flip,flop,swap", ProcessingSettings(max_steps=2))
    with pytest.raises(ImageRejected, match="exceeds the limit of 100"):
        run(Image.new("RGB", (2, 2)), "thumbnail:11", ProcessingSettings(max_image_pixels=100))


def test_a_result_over_the_pixel_limit_is_rejected() -> None:
    config = ProcessingSettings(max_image_pixels=1_000)
    with pytest.raises(ImageRejected, match="rotate:45 would make a 44x44 image"):
        run(Image.new("RGB", (30, 30)), "rotate:45", config)


def test_the_rotate_bomb_is_refused_before_it_allocates() -> None:
    # issue 13: a 2 KB 20000x100 PNG turned 45 degrees took a worker to 1.6 GB before failing
    source = encode(Image.new("L", (20_000, 100)))
    before = _peak_rss_bytes()
    with pytest.raises(ImageRejected, match=r"rotate:45 would make a 14214x14214 image"):
        process_image(source, io.BytesIO(), "rotate:45", ProcessingSettings())
    assert _peak_rss_bytes() - before < 50 * 1024 * 1024  # the canvas alone is 800 MB


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:  # VmHWM: this process's own peak, not a fork's
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


ROTATIONS = [1, 4500, 3333, 9000, 12345, 18000, 27000, 35999]


@pytest.mark.parametrize("hundredths", ROTATIONS)
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (30, 17), (101, 64)])
def test_planned_sizes_are_the_sizes_each_step_makes(
    hundredths: int, size: tuple[int, int]
) -> None:
    text = (
        f"rotate:{hundredths / 100},crop:1x1+0+0,blur:1,resize:9x5,rotate:{hundredths / 100},"
        "resize:4x9:fill,thumbnail:3,grayscale,sharpen,flip,swap"
    )
    operations = grammar.parse_pipeline(text, ProcessingSettings(max_steps=20)).operations
    image = Image.new("RGB", size)
    planned = plan_sizes(operations, size, SETTINGS, grammar.OutputFormat("png"))
    made = []
    for operation in operations:
        image = apply(operation, image)
        made.append(image.size)
    assert planned == made
    assert [output_size(operations[0], size)] == planned[:1]


def test_a_crop_outside_the_image_is_refused_when_planned() -> None:
    with pytest.raises(ImageRejected, match="crop:5x5\\+8\\+0 lies outside the 10x10 image"):
        plan_sizes(
            grammar.parse_pipeline("crop:5x5+8+0", SETTINGS).operations,
            (10, 10),
            SETTINGS,
            grammar.OutputFormat("png"),
        )


@pytest.mark.parametrize(
    ("size", "output", "longest"), [((16_384, 2), "webp", 16_383), ((65_501, 2), "jpeg", 65_500)]
)
def test_encoder_limits_are_rejections_found_before_any_step_runs(
    size: tuple[int, int], output: str, longest: int
) -> None:
    # issue 13: Pillow's OSError from the encoder was retried three times, three tracebacks
    source = encode(Image.new("L", size))
    with pytest.raises(ImageRejected, match=f"cannot be written as {output}.*at most {longest}"):
        process_image(source, io.BytesIO(), f"flip,{output}", SETTINGS)
    fits = encode(Image.new("L", (longest, 2)))
    assert process_image(fits, io.BytesIO(), output, SETTINGS) == f"image/{output}"


def test_an_encoder_limit_reached_through_a_step_is_found_when_planned() -> None:
    operations = grammar.parse_pipeline("rotate:90", SETTINGS).operations
    with pytest.raises(ImageRejected, match="a 2x20000 image cannot be written as webp"):
        plan_sizes(operations, (20_000, 2), SETTINGS, grammar.OutputFormat("webp"))


# pytest restores the warning filters after collection, dropping the one codec.py installs.
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_a_configured_pixel_limit_above_pillows_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 13: above Pillow's 89,478,485 a configured limit had no effect
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    under_ours = png_bomb(9_600, 9_600)  # 92 M pixels: over Pillow's default
    with pytest.raises(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(under_ours))
    limits = ProcessingSettings(max_image_pixels=100_000_000)
    use_pixel_limit(limits)
    with Image.open(io.BytesIO(under_ours)) as opened:  # Pillow checks while opening
        assert opened.size == (9_600, 9_600)
    with pytest.raises(ImageRejected, match="more than the limit of 100000000 pixels"):
        process_image(io.BytesIO(png_bomb(10_000, 10_001)), io.BytesIO(), "swap", limits)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_a_configured_pixel_limit_below_pillows_is_pillows_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    use_pixel_limit(ProcessingSettings(max_image_pixels=1_000))
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(png_bomb(40, 40)))


def test_invalid_pipeline_at_processing_time_is_rejected() -> None:
    with pytest.raises(ImageRejected, match="invalid pipeline: step 1 'explode'"):
        run(Image.new("RGB", (2, 2)), "explode")


def test_streams_are_left_open_for_the_caller() -> None:
    source, destination = encode(Image.new("RGB", (2, 2))), io.BytesIO()
    process_image(source, destination, "swap", SETTINGS)
    assert not source.closed and not destination.closed
    assert destination.getvalue().startswith(b"\x89PNG")


def test_concurrent_calls_do_not_interfere() -> None:
    jobs = [
        ((i, 2 * i, 3 * i, 255), ProcessingSettings(max_image_pixels=100 + i)) for i in range(8)
    ]
    outcomes: dict[int, object] = {}

    def work(index: int) -> None:
        colour, config = jobs[index]
        size = (10, 10) if index % 2 else (20, 20)  # odd jobs fit their limit, even do not
        try:
            outcomes[index] = run(Image.new("RGBA", size, colour), "swap", config)[0].getpixel(
                (0, 0)
            )
        except ImageRejected:
            outcomes[index] = "rejected"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (colour, _) in enumerate(jobs):
        expected = (colour[1], colour[0], colour[2], 255) if index % 2 else "rejected"
        assert outcomes[index] == expected


@given(
    st.tuples(*[st.integers(0, 255)] * 4),
    st.sampled_from(["RGBA", "RGB", "LA", "L"]),
)
@settings(max_examples=30, deadline=None)
def test_swap_twice_is_identity(colour: tuple[int, int, int, int], mode: str) -> None:
    image = Image.new("RGBA", (3, 3), colour).convert(mode)
    result, _ = run(image, "swap,swap")
    assert result.mode == mode
    assert result.tobytes() == image.tobytes()
