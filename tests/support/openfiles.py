"""Raising this test process's open-file limit for connection floods, bounded and undone."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

import pytest

WANTED_OPEN_FILES = 4096


@contextlib.contextmanager
def open_files_for(connections: int) -> Iterator[None]:
    """The soft descriptor limit raised (up to the hard one) so ``connections`` sockets fit;
    skips the test when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(WANTED_OPEN_FILES, hard)
    if wanted < connections:
        pytest.skip(f"the hard limit on open files ({hard}) is too low for {connections} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
