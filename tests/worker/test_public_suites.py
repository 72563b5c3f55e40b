"""Public image test suites through the worker's processing, checked by an independent decoder.

Every image of the suites in ``support.imagesuites`` (PngSuite, the BMP Suite, Pillow's,
pillow-heif's and Go's decoder test files: about 900) goes through ``process_image`` with
``flop`` (exact, lossless: the result is PNG). libvips, a decoder that shares no code with
Pillow, reads the original and the result; the result must be the original mirrored, pixel for
pixel (within 2.5 levels, or 1.5 levels on average for AVIF, whose decoders differ in chroma
upsampling). Where libvips refuses a file (its wheel reads no BMP and no HEVC), Darkroom may
read it or refuse it with a reason; where both refuse, Darkroom must say why. Each file on which
the two disagree on purpose is listed below with the reason. The files up to 1 MB also go to
JPEG, WebP and AVIF, each result read whole by libvips.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import pyvips

from darkroom.worker.codec import ImageRejected, ProcessingSettings
from darkroom.worker.operations import process_image
from support import imagesuites

SETTINGS = ProcessingSettings()
LEVEL = 1 / 255  # one 8-bit level, on the 0..1 scale the pixels are compared on
MAX_DIFFERENCE = 2.5 * LEVEL
MEAN_DIFFERENCE_LOSSY = 1.5 * LEVEL  # AVIF: another AV1 decoder, another chroma upsampling
LOSSY_DECODERS = (".avif",)
# Darkroom's reasons for refusing an image all start so (codec._decoding_errors and friends).
REASON = re.compile(r"^(not a supported image|cannot decode the (image|animation)|image is )")

_CMYK = (
    "CMYK without a profile: Darkroom converts through FOGRA39 (README), libvips through its own "
    "default CMYK profile"
)
_XMP_ORIENTATION = (
    "an orientation given in XMP only: Darkroom turns the picture upright (Pillow's "
    "exif_transpose reads XMP too), libvips reads EXIF's orientation only"
)
_APNG_DEFAULT_IMAGE = (
    "an APNG whose default image is not a frame: the result is its animation, first frame "
    "first, as an APNG viewer shows it; libvips, which does not animate, shows the default image"
)
# The result differs from libvips's reading, and why.
DIFFERS = {
    "go/video-001.cmyk.jpeg": _CMYK,
    "pillow/pil_sample_cmyk.jpg": _CMYK,
    "pillow/tiff_strip_cmyk_jpeg.tif": _CMYK,
    "pillow/tiff_strip_cmyk_16l_jpeg.tif": _CMYK,
    "pillow/tiff_tiled_cmyk_jpeg.tif": _CMYK,
    "pillow/xmp_tags_orientation.png": _XMP_ORIENTATION,
    "pillow/xmp_tags_orientation_exiftool.png": _XMP_ORIENTATION,
    "pillow/avif/xmp_tags_orientation.avif": _XMP_ORIENTATION,
    "pillow/exif_imagemagick_orientation.png": (
        "an orientation in ImageMagick's raw EXIF text chunk: Darkroom (Pillow) reads it, "
        "libvips reads the eXIf chunk only"
    ),
    "pillow/test_extents.gif": (
        "a frame reaching past the GIF's logical screen: Pillow grows the canvas to hold it, "
        "libvips keeps the screen's size"
    ),
    "pillow/8bit.s.tif": (
        "signed 8-bit samples: Pillow reads their bytes as unsigned levels, libvips as signed"
    ),
    "pillow/16_bit_binary_pgm.tiff": (
        "32-bit integer samples holding 0..65535: Darkroom keeps them as 16-bit levels, libvips "
        "as 32-bit ones (near black)"
    ),
    **{
        f"pillow/apng/{name}.png": _APNG_DEFAULT_IMAGE
        for name in (
            "blend_op_over",
            "blend_op_over_near_transparent",
            "delay",
            "delay_round",
            "delay_short_max",
            "delay_zero_denom",
            "delay_zero_numer",
            "dispose_op_previous",
            "dispose_op_previous_region",
            "mode_16bit",
            "mode_grayscale",
            "mode_grayscale_alpha",
            "mode_palette_alpha",
            "num_plays",
            "num_plays_1",
            "single_frame_default",
            "split_fdat",
            "split_fdat_zero_chunk",
            "syntax_num_frames_low",
        )
    },
}
# Darkroom refuses what libvips reads, and why.
REFUSED = {
    "pillow/decompression_bomb_extents.gif": (
        "a frame's extents make the image larger than the pixel limit"
    ),
    "pillow/hopper_unknown_pixel_mode.tif": "samples in a layout Pillow has no mode for",
    "pillow/hopper_webp.tif": (
        "a WebP-compressed TIFF: the libtiff in Pillow's wheels has no WebP codec"
    ),
    "pillow/tiff_tiled_jpeg_oob_read.tif": (
        "a fuzzer's file: JPEG tiles that Pillow's libtiff refuses to read past their end"
    ),
}


def _suite_images() -> list[str]:
    return [
        f"{source}/{path.relative_to(imagesuites.cache_dir() / source).as_posix()}"
        for source in imagesuites.SOURCES
        for path in imagesuites.suite_files(source)
    ]


SUITE_IMAGES = _suite_images()
# Writing three formats of a 33-megapixel photo takes 20 s; such files, phones' and cameras'
# photos, go through the test above only.
MAX_BYTES_IN_EVERY_FORMAT = 1 << 20
SMALL_SUITE_IMAGES = [
    name
    for name in SUITE_IMAGES
    if (imagesuites.cache_dir() / name).stat().st_size <= MAX_BYTES_IN_EVERY_FORMAT
]


def test_the_suites_are_fetched() -> None:
    missing = [source for source in imagesuites.SOURCES if not imagesuites.suite_files(source)]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(
            f"image suites not fetched ({', '.join(missing)}): "
            "python tests/support/imagesuites.py fetch (scripts/test.sh does)"
        )
    assert not missing, f"image suites missing in {imagesuites.cache_dir()}: {missing}"
    assert len(SUITE_IMAGES) > 880
    assert set(DIFFERS) | set(REFUSED) <= set(SUITE_IMAGES)


@pytest.mark.parametrize("name", SUITE_IMAGES)
def test_a_public_suite_image_comes_out_as_libvips_sees_it(name: str) -> None:
    data = (imagesuites.cache_dir() / name).read_bytes()
    expected = _libvips_flopped(data)
    try:
        result = _darkroom(data, "flop")
    except ImageRejected as exc:
        assert REASON.match(str(exc)), f"unclear reason: {exc}"
        if expected is not None:
            assert name in REFUSED, f"refused what libvips reads: {exc}"
        return
    assert name not in REFUSED, "read what it is listed as refusing"
    got = _premultiplied_rgba(pyvips.Image.new_from_buffer(result, "", fail=True))
    if expected is None:
        return  # read where libvips refuses it; the result is a sound PNG (read just above)
    disagreement = _disagreement(name, got, expected)
    if name in DIFFERS:
        assert disagreement, f"listed as different, but agrees: {DIFFERS[name]}"
    else:
        assert disagreement is None, disagreement


@pytest.mark.parametrize("name", SMALL_SUITE_IMAGES)
def test_a_public_suite_image_gives_a_sound_file_or_a_reason_in_every_format(name: str) -> None:
    # Still and animated writers each: Pillow's WebP writer refused frames of two sizes, its
    # AVIF writer walked the frames of a file it was given one of
    data = (imagesuites.cache_dir() / name).read_bytes()
    for output, loader in (("jpeg", "jpegload"), ("webp", "webpload"), ("avif", "heifload")):
        try:
            result = _darkroom(data, output)
        except ImageRejected as exc:
            assert REASON.match(str(exc)), f"{output}: unclear reason: {exc}"
            continue
        loaded = pyvips.Image.new_from_buffer(result, "", fail=True)
        assert loaded.get("vips-loader").startswith(loader)
        loaded.copy_memory()  # decoded whole: a broken file fails here


def _bmp_suite_references() -> list[str]:
    folder = imagesuites.suite_dir("pillow")
    return [] if folder is None else sorted(p.name for p in (folder / "bmp" / "html").glob("*.png"))


@pytest.mark.parametrize("reference", _bmp_suite_references())
def test_a_bmp_suite_image_looks_as_the_suite_renders_it(reference: str) -> None:
    # libvips reads no BMP: the BMP Suite's own renderings of its good files are the reference
    folder = imagesuites.cache_dir() / "pillow" / "bmp"
    source = folder / "g" / reference.replace("-e.png", ".png").replace(".png", ".bmp")
    got = _premultiplied_rgba(pyvips.Image.new_from_buffer(_darkroom(source.read_bytes()), ""))
    expected = _premultiplied_rgba(pyvips.Image.new_from_file(str(folder / "html" / reference)))
    assert _disagreement(reference, got, expected) is None


def _darkroom(data: bytes, pipeline: str = "png") -> bytes:
    destination = io.BytesIO()
    process_image(io.BytesIO(data), destination, pipeline, SETTINGS)
    return destination.getvalue()


def _libvips_flopped(data: bytes) -> pyvips.Image | None:
    """The image as libvips reads it (upright, mirrored, whole), or None if it refuses it."""
    try:
        image = pyvips.Image.new_from_buffer(data, "", fail=True).autorot().fliphor()
        return _premultiplied_rgba(image).copy_memory()  # decoded now: a failure shows here
    except pyvips.Error:
        return None


# The full scale of each libvips sample format.
_FULL_SCALE = {
    "uchar": 255,
    "char": 255,
    "ushort": 65535,
    "short": 65535,
    "uint": 2**32 - 1,
    "int": 2**32 - 1,
    "float": 1,
    "double": 1,
}


def _premultiplied_rgba(image: pyvips.Image) -> pyvips.Image:
    """The picture as sRGB red, green, blue and alpha, 0..1, colour premultiplied by alpha (a
    transparent pixel's colour is no part of the picture)."""
    if image.get_typeof("icc-profile-data") or image.interpretation in ("cmyk", "lab", "labs"):
        depth = 16 if image.format == "ushort" else 8
        try:
            image = image.icc_transform("srgb", embedded=True, intent="relative", depth=depth)
        except pyvips.Error:  # a profile lcms cannot use
            image = image.colourspace("srgb")
    samples = image.cast("double") / _FULL_SCALE[image.format]
    colours = samples.bands - 1 if image.hasalpha() else samples.bands
    if colours >= 3:
        rgb = samples.extract_band(0, n=3)
    else:
        grey = samples.extract_band(0)
        rgb = grey.bandjoin([grey, grey])
    if image.hasalpha():
        alpha = samples.extract_band(samples.bands - 1)
    else:
        alpha = rgb.extract_band(0) * 0 + 1
    return (rgb * alpha).bandjoin(alpha)


def _disagreement(name: str, got: pyvips.Image, expected: pyvips.Image) -> str | None:
    """How the result differs from libvips's reading of the original, or None if it agrees."""
    if (got.width, got.height) != (expected.width, expected.height):
        return f"{got.width}x{got.height}, where libvips reads {expected.width}x{expected.height}"
    difference = (got - expected).abs()
    if Path(name).suffix in LOSSY_DECODERS:
        agrees = difference.avg() <= MEAN_DIFFERENCE_LOSSY
    else:
        agrees = difference.max() <= MAX_DIFFERENCE
    if agrees:
        return None
    _, x, y = difference.maxpos()
    return (
        f"differs from libvips by up to {difference.max() / LEVEL:.1f} levels (at {x},{y}), "
        f"{difference.avg() / LEVEL:.2f} on average"
    )
