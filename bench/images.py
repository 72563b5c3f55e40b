"""The benchmark's images, made from a seed so every run processes the same bytes.

``photo`` is photo-like: smooth multi-scale colour, a few sharp-edged shapes, a little blur and
sensor grain. It compresses like a photo (about 3.3 MB as a 1600x1200 PNG at level 6), which
is what makes PNG encoding the dominant cost, as it is with real photos.
"""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageChops, ImageDraw, ImageFilter

PHOTO_SIZE = (1600, 1200)
SMALL_SIZE = (64, 64)


def photo(seed: int, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
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
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = Image.effect_noise(size, 4).convert("L")
    return ImageChops.add(image, Image.merge("RGB", (grain, grain, grain)), offset=-128)


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
