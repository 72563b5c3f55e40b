"""The container images, built with podman and run end to end (scripts/podman-e2e.sh).

Slow (about two minutes with cached layers, up to five on a fresh machine) and needs root,
podman and the network to PyPI and Debian, so it runs only with DARKROOM_CONTAINER_TESTS=1.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUDGET_SECONDS = 1200

pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(
        os.environ.get("DARKROOM_CONTAINER_TESTS") != "1",
        reason="container tests are off: set DARKROOM_CONTAINER_TESTS=1 (needs root and podman)",
    ),
]


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_images_build_and_process_an_image_end_to_end() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "podman-e2e.sh")],
        cwd=ROOT,
        env={**os.environ, "DARKROOM_E2E_TIMEOUT": str(BUDGET_SECONDS)},
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS + 30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "PASS" in output
    assert output.count("every pixel is (G, R, B) with alpha kept") == 2, output[-3000:]
