"""Tests for shrink-on-load (darkroom.worker.operations.plan_shrink_on_load and its use).

A JPEG whose first geometric step scales it down is decoded at 1/2, 1/4 or 1/8 size. Each
result is compared with what a full-size decode and a LANCZOS resize make of the same file.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageOps, ImageStat

from darkroom.contract.pipeline import PipelineLimits, parse_pipeline
from darkroom.worker.codec import decode, open_image
from darkroom.worker.operations import ImageRejected, ProcessingSettings, plan_shrink_on_load
from support.processing import encode, run

MAX_MEAN_DIFFERENCE = 2.0  # levels out of 255, averaged over pixels and channels


@cache
def photo_jpeg(size: tuple[int, int] = (2048, 1536), orientation: int = 1) -> bytes:
    """A photo-like q90 JPEG: smooth gradients, fine detail, sharp edges."""
    width, height = size
    detail = Image.effect_mandelbrot(size, (-2.2, -1.2, 1.0, 1.2), 64)
    ramp = Image.linear_gradient("L").resize(size)
    noise = Image.effect_noise(size, 24)
    image = Image.merge("RGB", (detail, ramp, ImageChops.add(ramp.rotate(180), noise, 2)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 5, height // 4, width // 2, height * 3 // 4), fill=(250, 40, 10))
    draw.rectangle((width * 3 // 5, height // 8, width * 4 // 5, height // 3), fill=(0, 0, 0))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def full_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    channels = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean
    return sum(channels) / len(channels)


def plan(pipeline: str, size: tuple[int, int] | None) -> tuple[int, int] | None:
    operations = parse_pipeline(pipeline, PipelineLimits(max_image_pixels=10**9)).operations
    return plan_shrink_on_load(operations, size)[1]


# --- the results are those of a full-size decode -----------------------------------------------


def lanczos(size: tuple[int, int]):
    return lambda image: image.resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize(
    ("pipeline", "reference"),
    [
        ("resize:512x512", lanczos((512, 384))),
        ("thumbnail:512", lanczos((512, 384))),
        ("resize:300x300", lanczos((300, 225))),  # decoded at 1/4, then resized
        ("resize:900x900", lanczos((900, 675))),  # decoded at 1/2
        ("resize:100x100", lanczos((100, 75))),  # decoded at 1/8
        (
            "resize:256x256:fill",
            lambda image: ImageOps.fit(image, (256, 256), Image.Resampling.LANCZOS),
        ),
        (
            "flop,grayscale,resize:512x512",
            lambda image: ImageOps.mirror(image).convert("L").resize((512, 384), 1),
        ),
        (
            "rotate:90,resize:256x512",  # a quarter turn first: the box is in turned axes
            lambda image: image.transpose(Image.Transpose.ROTATE_270).resize((256, 341), 1),
        ),
        (
            "crop:1024x1024+512+256,resize:256x256",  # a crop first: no shrinking
            lambda image: image.crop((512, 256, 1536, 1280)).resize((256, 256), 1),
        ),
    ],
)
def test_a_shrunk_decode_gives_the_full_size_result(pipeline: str, reference) -> None:
    data = photo_jpeg()
    expected = reference(full_decode(data))
    result, _ = run(data, pipeline + ",png")
    assert result.size == expected.size
    assert mean_difference(result, expected) < MAX_MEAN_DIFFERENCE


@pytest.mark.parametrize("orientation", [6, 8])  # 6: shown turned clockwise, 8: anticlockwise
def test_exif_orientation_turns_the_box_before_shrinking(orientation: int) -> None:
    data = photo_jpeg(orientation=orientation)
    assert plan("resize:512x512", (1536, 2048)) == (384, 512)
    opened = open_image(io.BytesIO(data), ProcessingSettings())
    assert opened.shrinkable_size == (1536, 2048)
    assert opened.decode(at_least=(384, 512))[0].size == (384, 512)  # 1/4: axes swapped back
    expected = full_decode(data).resize((384, 512), Image.Resampling.LANCZOS)
    result, _ = run(data, "resize:512x512,png")
    assert result.size == (384, 512)
    assert mean_difference(result, expected) < MAX_MEAN_DIFFERENCE


def test_the_fit_size_comes_from_the_full_size_not_the_shrunk_one() -> None:
    # 2000x1021 decodes at 1/2 as 1000x511, which would fit 500x500 as 500x256.
    data = photo_jpeg((2000, 1021))
    result, _ = run(data, "resize:500x500,png")
    assert result.size == (500, 255)
    expected = full_decode(data).resize((500, 255), Image.Resampling.LANCZOS)
    assert mean_difference(result, expected) < MAX_MEAN_DIFFERENCE


@pytest.mark.parametrize(
    ("mode", "options"), [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True})]
)
def test_grey_cmyk_and_progressive_jpegs_shrink_to_the_same_colours(
    mode: str, options: dict[str, object]
) -> None:
    source = full_decode(photo_jpeg()).convert(mode)
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=90, **options)
    # The worker's own full-size decode: CMYK becomes RGB through its press profile.
    full, _ = decode(io.BytesIO(buffer.getvalue()), ProcessingSettings())
    expected = full.convert("RGB").resize((512, 384), Image.Resampling.LANCZOS)
    result, _ = run(buffer.getvalue(), "resize:512x512,png")
    assert mean_difference(result, expected) < MAX_MEAN_DIFFERENCE


def test_only_a_jpeg_can_shrink_and_nothing_else_is_decoded_to_know_it() -> None:
    truncated = encode(full_decode(photo_jpeg((64, 48)))).getvalue()[:2000]
    opened = open_image(io.BytesIO(truncated), ProcessingSettings())  # only the header is read
    assert opened.shrinkable_size is None
    assert plan("resize:16x16", None) is None
    with pytest.raises(ImageRejected, match="cannot decode"):
        opened.decode()


def test_a_large_png_downscale_stays_close_to_lanczos() -> None:
    source = full_decode(photo_jpeg())
    expected = source.resize((512, 384), Image.Resampling.LANCZOS)
    result, _ = run(source, "resize:512x512")  # PNG: reduced by a whole factor, then LANCZOS
    assert mean_difference(result, expected) < 1.0


def test_a_large_downscale_does_not_bleed_transparent_colour() -> None:
    image = Image.new("RGBA", (400, 400), (255, 0, 0, 0))  # invisible red
    image.paste((0, 0, 255, 255), (200, 0, 400, 400))
    result, _ = run(image, "resize:50x50")  # reduced by 4 first: in premultiplied colour too
    edge = [result.getpixel((x, 25)) for x in (24, 25)]  # the half-covered columns
    assert all(0 < alpha < 255 and red == 0 for red, _, _, alpha in edge)


# --- when the plan shrinks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "at_least"),
    [
        ("resize:512x512", (512, 384)),
        ("swap,flip,resize:512x512,blur:2", (512, 384)),
        ("thumbnail:512", (512, 384)),
        ("resize:512x512:fill", (683, 512)),  # covers the box: the short side decides
        ("rotate:270,resize:384x512", (512, 384)),  # given in the source's axes
        ("rotate:180,resize:512x512", (512, 384)),
    ],
)
def test_the_plan_keeps_the_first_downscales_size(pipeline: str, at_least: tuple[int, int]) -> None:
    assert plan(pipeline, (2048, 1536)) == at_least


@pytest.mark.parametrize(
    "pipeline",
    [
        "swap",  # no resize
        "resize:4096x4096",  # enlarges
        "thumbnail:4096",  # never enlarges: nothing to do
        "crop:100x100+0+0,resize:50x50",  # the crop is in full-size pixels
        "blur:2,resize:512x512",  # so is the blur radius
        "sharpen,resize:512x512",
        "rotate:45,resize:512x512",
    ],
)
def test_the_plan_decodes_at_full_size(pipeline: str) -> None:
    assert plan(pipeline, (2048, 1536)) is None


def test_the_pixel_limit_is_checked_on_the_declared_size_before_shrinking() -> None:
    config = ProcessingSettings(max_image_pixels=2048 * 1536 - 1)
    with pytest.raises(ImageRejected, match=rf"2048x1536 .*limit of {2048 * 1536 - 1} pixels"):
        run(photo_jpeg(), "thumbnail:64", config)


# --- memory ---------------------------------------------------------------------------------

# In a fresh interpreter: the peak resident size while a 50-megapixel JPEG is thumbnailed.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking (large) test process.
_THUMBNAIL_PEAK = textwrap.dedent(
    """
    import io, re, sys
    from pathlib import Path
    from PIL import Image
    from darkroom.worker.operations import ProcessingSettings, process_image
    def peak_mb():
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1]) // 1024
    before = peak_mb()
    result = io.BytesIO()
    with open(sys.argv[1], "rb") as source:
        process_image(source, result, "thumbnail:512,jpeg:80", ProcessingSettings())
    print(before, peak_mb(), *Image.open(result).size)
    """
)
_MAKE_50_MEGAPIXELS = textwrap.dedent(
    """
    import sys
    from PIL import Image
    grey = Image.linear_gradient("L").resize((8160, 6120))
    colour = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))
    colour.save(sys.argv[1], quality=90)
    """
)


def test_a_50_megapixel_jpeg_thumbnail_needs_far_less_memory_than_its_pixels(
    tmp_path: Path,
) -> None:
    path = tmp_path / "50mp.jpg"
    python = [sys.executable, "-c"]
    subprocess.run([*python, _MAKE_50_MEGAPIXELS, str(path)], check=True, timeout=120)
    out = subprocess.run(
        [*python, _THUMBNAIL_PEAK, str(path)],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(sys.path)},
    ).stdout
    before_mb, peak_mb, width, height = map(int, out.split())
    assert (width, height) == (512, 384)
    full_decode_mb = 8160 * 6120 * 3 // 2**20  # 142 MB of RGB pixels
    assert peak_mb - before_mb < full_decode_mb // 4
    assert peak_mb <= 200
