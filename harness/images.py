"""Test images made in the test, and the results Darkroom must produce from them."""

from __future__ import annotations

import io
import random

from PIL import Image


def png_bytes(size: tuple[int, int] = (8, 6), mode: str = "RGBA", seed: int = 1) -> bytes:
    """A small PNG with distinct pixel values, for checking what processing did to each."""
    image = Image.new(mode, size)
    pixels = [
        tuple((x * 37 + y * 11 + c * seed * 53) % 256 for c in range(len(mode)))
        for y in range(size[1])
        for x in range(size[0])
    ]
    image.putdata(pixels if len(mode) > 1 else [p[0] for p in pixels])
    return encode(image)


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-sized PNG that does not compress: slow enough to catch a worker mid-task."""
    data = random.Random(seed).randbytes(size[0] * size[1] * 3)
    return encode(Image.frombytes("RGB", size, data), compress_level=1)


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def swapped(data: bytes) -> Image.Image:
    """What the seed's operation makes of an RGB(A) image: red and green exchanged."""
    image = decode(data)
    bands = image.split()
    return Image.merge(image.mode, (bands[1], bands[0], *bands[2:]))


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()
