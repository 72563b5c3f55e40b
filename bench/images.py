"""The benchmark's images, made from a seed so every run processes the same bytes.

``photo`` is photo-like: smooth multi-scale colour, a few sharp-edged shapes, a little blur and
sensor grain. It compresses like a photo (about 3.3 MB as a 1600x1200 PNG at level 6), which
is what makes PNG encoding the dominant cost, as it is with real photos. ``camera`` is the same
kind of picture softer and with less grain, stored as JPEG at quality 90: about 350 KB at
2048x1536, like a camera's JPEG of that size. Everything, the grain too, comes from the seed.
"""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageChops, ImageDraw, ImageFilter

PHOTO_SIZE = (1600, 1200)
SMALL_SIZE = (64, 64)
CAMERA_SIZE = (2048, 1536)
LARGE_SIZE = (8660, 5773)  # 50 megapixels, within the worker's default limit of 50 000 000
UNIFORM_BYTE_SIGMA = 73.9  # the standard deviation of uniformly random bytes


def photo(
    seed: int, size: tuple[int, int] = PHOTO_SIZE, blur: float = 1.5, grain: float = 4.0
) -> Image.Image:
    rnd = random.Random(seed)
    width, height = size
    image: Image.Image | None = None
    for cells, weight in ((6, 1.0), (25, 0.5), (100, 0.35), (400, 0.2)):
        columns, rows = cells, max(1, cells * height // width)
        noise = Image.frombytes("RGB", (columns, rows), rnd.randbytes(columns * rows * 3))
        layer = noise.resize(size, Image.Resampling.BICUBIC)
        image = layer if image is None else Image.blend(image, layer, weight / (1 + weight))
    assert image is not None
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rnd.randrange(width), rnd.randrange(height)
        box = (x, y, x + rnd.randrange(50, 500), y + rnd.randrange(50, 400))
        draw.ellipse(box, fill=tuple(rnd.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(blur))
    # Grain from the seed (Image.effect_noise follows C's rand(), which differs per process).
    noise = Image.frombytes("L", size, rnd.randbytes(width * height))
    scale = grain / UNIFORM_BYTE_SIGMA
    noise = noise.point([round(128 + (value - 128) * scale) for value in range(256)])
    return ImageChops.add(image, Image.merge("RGB", (noise, noise, noise)), offset=-128)


def camera(seed: int, size: tuple[int, int] = CAMERA_SIZE) -> bytes:
    """A photo-like JPEG at quality 90, softer and less grainy than ``photo``."""
    buffer = io.BytesIO()
    photo(seed, size, blur=4.0, grain=1.0).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def small(seed: int, size: tuple[int, int] = SMALL_SIZE) -> Image.Image:
    """A small RGB image with distinct pixels (so a wrong swap cannot pass)."""
    rnd = random.Random(seed)
    return Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # Pillow's defaults: what a user's files look like
    return buffer.getvalue()


def make(kind: str, seed: int) -> tuple[bytes, str]:
    """The PNG to upload and the digest of the pixels the result must have (R and G swapped)."""
    image = photo(seed) if kind == "photo" else small(seed)
    red, green, blue = image.split()
    return png(image), pixel_digest(Image.merge("RGB", (green, red, blue)))


def pixel_digest(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()


def result_digest(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return pixel_digest(image)


def thumbnail_problem(data: bytes, longest_side: int) -> str | None:
    """Why ``data`` is not a JPEG whose longest side is ``longest_side``; None when it is."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format != "JPEG" or max(image.size) != longest_side:
                return f"{image.format} {image.size[0]}x{image.size[1]}"
    except OSError as exc:
        return f"not an image: {exc}"
    return None
