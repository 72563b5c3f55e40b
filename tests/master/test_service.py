"""The master's process: it checks pipelines without the worker's imaging library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.mark.parametrize("module", ["darkroom.master.app", "darkroom.master.service"])
def test_importing_the_master_does_not_import_pillow(module: str) -> None:
    # A fresh interpreter: this test process has imported Pillow for other tests already.
    code = f"import sys, {module}; assert 'PIL' not in sys.modules, 'PIL imported'"
    env = {**os.environ, "PYTHONPATH": str(SERVICES)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
