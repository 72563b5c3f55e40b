"""Image processing: parse the pipeline, decode, apply each step to the pixels, encode.

The grammar (what each step means, its limits, the canonical text) is
``darkroom.contract.pipeline``; reading and writing files, colour modes and metadata are
``darkroom.worker.codec``. This module holds what each operation does to the pixels and
``process_image``, which runs the three in turn.

Pure functions of their inputs: no HTTP, no global state changed per call, safe to call from
several threads at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, BinaryIO

from PIL import Image, ImageFilter, ImageOps

from darkroom.contract.pipeline import (
    Blur,
    Crop,
    Flip,
    Flop,
    Grayscale,
    InvalidPipeline,
    Operation,
    Resize,
    Rotate,
    Sharpen,
    Swap,
    Thumbnail,
    parse_pipeline,
)
from darkroom.worker.codec import (
    ImageRejected,
    ProcessingSettings,
    decode,
    encode,
    sixteen_to_eight,
)


def process_image(
    source: BinaryIO,
    destination: BinaryIO,
    pipeline_text: str | None,
    settings: ProcessingSettings,
    timings: dict[str, float] | None = None,
) -> str:
    """Decode ``source``, apply the pipeline, encode to ``destination``; return the media type.

    Raises ImageRejected for anything wrong with the image or, since no retry can fix it either,
    with the pipeline. Errors writing to ``destination`` propagate unchanged. When ``timings``
    is given, the seconds spent in ``decode``, ``operation`` and ``encode`` are stored in it.
    """
    timings = {} if timings is None else timings
    try:
        pipeline = parse_pipeline(pipeline_text, settings)
    except InvalidPipeline as exc:
        raise ImageRejected(f"invalid pipeline: {exc}") from exc
    started = time.perf_counter()
    image, metadata = decode(source, settings)
    decoded = time.perf_counter()
    timings["decode"] = decoded - started
    for operation in pipeline.operations:
        image = apply(operation, image)
        _check_result_pixels(image, operation, settings)
    operated = time.perf_counter()
    timings["operation"] = operated - decoded
    output = pipeline.output_format
    kept = metadata if pipeline.keep_metadata else replace(metadata, exif=None, xmp=None)
    encode(image, kept, output, destination, settings)
    timings["encode"] = time.perf_counter() - operated
    return output.media_type


def apply(operation: Operation, image: Image.Image) -> Image.Image:
    """What ``operation`` makes of ``image`` (a working-mode image: L, LA, RGB, RGBA or I)."""
    return PIXEL_STEPS[type(operation)](operation, image)


def _check_result_pixels(
    image: Image.Image, operation: Operation, settings: ProcessingSettings
) -> None:
    if image.width * image.height > settings.max_image_pixels:
        raise ImageRejected(
            f"{operation.text} makes a {image.width}x{image.height} image, "
            f"more than the limit of {settings.max_image_pixels} pixels"
        )


# ---------------------------------------------------------------------------------------------
# The operations


def _swap(step: Swap, image: Image.Image) -> Image.Image:
    """Output is (G, R, B), alpha kept."""
    if image.mode not in ("RGB", "RGBA"):
        return image  # grey: red and green are the same channel
    bands = image.split()
    return Image.merge(image.mode, (bands[1], bands[0], *bands[2:]))


def _grayscale(step: Grayscale, image: Image.Image) -> Image.Image:
    return {"RGB": image.convert("L"), "RGBA": image.convert("LA")}.get(image.mode, image)


def _resize(step: Resize, image: Image.Image) -> Image.Image:
    if step.fill:
        return ImageOps.fit(image, (step.width, step.height), Image.Resampling.LANCZOS)
    return _fit_inside(image, step.width, step.height)


def _thumbnail(step: Thumbnail, image: Image.Image) -> Image.Image:
    if image.width <= step.size and image.height <= step.size:
        return image
    return _fit_inside(image, step.size, step.size)


def _crop(step: Crop, image: Image.Image) -> Image.Image:
    right, bottom = step.x + step.width, step.y + step.height
    if right > image.width or bottom > image.height:
        raise ImageRejected(f"{step.text} lies outside the {image.width}x{image.height} image")
    return image.crop((step.x, step.y, right, bottom))


# Clockwise quarter turns; Pillow's ROTATE_90 is anticlockwise.
_QUARTER_TURNS = {
    9000: Image.Transpose.ROTATE_270,
    18000: Image.Transpose.ROTATE_180,
    27000: Image.Transpose.ROTATE_90,
}


def _rotate(step: Rotate, image: Image.Image) -> Image.Image:
    if step.hundredths == 0:
        return image
    if step.hundredths in _QUARTER_TURNS:
        return image.transpose(_QUARTER_TURNS[step.hundredths])
    # New corners are transparent; JPEG output then paints them white.
    if image.mode in ("L", "RGB"):
        image = image.convert(image.mode + "A")
    return image.rotate(-step.hundredths / 100, Image.Resampling.BICUBIC, expand=True)


def _flip(step: Flip, image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def _flop(step: Flop, image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _blur(step: Blur, image: Image.Image) -> Image.Image:
    blur = ImageFilter.GaussianBlur(step.hundredths / 100)
    if image.mode == "I":
        image = sixteen_to_eight(image)  # Pillow cannot blur 32-bit integer images
    # Blur premultiplied colour, else transparent pixels' colour bleeds into the edges.
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
    if premultiplied is None:
        return image.filter(blur)
    return image.convert(premultiplied).filter(blur).convert(image.mode)


def _sharpen(step: Sharpen, image: Image.Image) -> Image.Image:
    if image.mode not in ("LA", "RGBA"):
        return image.filter(ImageFilter.SHARPEN)
    # Sharpening alpha would add halos to the outline; sharpen the colour only.
    colour = image.convert(image.mode[:-1]).filter(ImageFilter.SHARPEN)
    colour.putalpha(image.getchannel("A"))
    return colour


def _fit_inside(image: Image.Image, width: int, height: int) -> Image.Image:
    # ImageOps.contain can round a side to 0 for very thin images.
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


# One entry per operation of the grammar (a test checks that none is missing).
PIXEL_STEPS: dict[type, Callable[[Any, Image.Image], Image.Image]] = {
    Swap: _swap,
    Grayscale: _grayscale,
    Resize: _resize,
    Thumbnail: _thumbnail,
    Crop: _crop,
    Rotate: _rotate,
    Flip: _flip,
    Flop: _flop,
    Blur: _blur,
    Sharpen: _sharpen,
}
