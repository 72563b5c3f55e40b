"""Fixtures every test may use."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from darkroom.core.config import Config


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path, lease_seconds=5.0, max_upload_bytes=1024 * 1024)


def png_bytes(size: tuple[int, int] = (8, 6), mode: str = "RGBA", seed: int = 1) -> bytes:
    """A small PNG with distinct pixel values, for checking what processing did to each."""
    image = Image.new(mode, size)
    pixels = [
        tuple((x * 37 + y * 11 + c * seed * 53) % 256 for c in range(len(mode)))
        for y in range(size[1])
        for x in range(size[0])
    ]
    image.putdata(pixels if len(mode) > 1 else [p[0] for p in pixels])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png() -> bytes:
    return png_bytes()
