"""Helpers for the worker's processing tests: encode a test image, process it, find a pixel."""

from __future__ import annotations

import io

import pillow_heif
from PIL import Image

from darkroom.worker.operations import ProcessingSettings, process_image

SETTINGS = ProcessingSettings()


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> io.BytesIO:
    buffer = io.BytesIO()
    if fmt == "HEIF":
        # The worker only decodes HEIF (pi-heif); the tests write it with pillow-heif's encoder.
        pillow_heif.from_pillow(image).save(buffer, **options)
    else:
        image.save(buffer, fmt, **options)
    buffer.seek(0)
    return buffer


def run(
    source: Image.Image | io.BytesIO | bytes,
    pipeline: str | None,
    config: ProcessingSettings = SETTINGS,
) -> tuple[Image.Image, str]:
    """Process and decode the result; returns (image, media type)."""
    if isinstance(source, Image.Image):
        source = encode(source)
    elif isinstance(source, bytes):
        source = io.BytesIO(source)
    destination = io.BytesIO()
    media_type = process_image(source, destination, pipeline, config)
    destination.seek(0)
    result = Image.open(destination)
    result.load()
    return result, media_type


def rgb_marked(size: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    """A black image with one red pixel, to follow where a pixel goes."""
    image = Image.new("RGB", size)
    image.putpixel(at, (255, 0, 0))
    return image


def red_at(image: Image.Image) -> tuple[int, int]:
    image = image.convert("RGB")
    return next(
        (x, y)
        for y in range(image.height)
        for x in range(image.width)
        if image.getpixel((x, y)) == (255, 0, 0)
    )
