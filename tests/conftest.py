"""Fixtures every test may use."""

from __future__ import annotations

import pytest

from darkroom.core.config import Config
from support.images import png_bytes


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=tmp_path, lease_seconds=5.0, max_upload_bytes=1024 * 1024)


@pytest.fixture
def png() -> bytes:
    return png_bytes()
