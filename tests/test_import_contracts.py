"""The import rules of pyproject.toml's [tool.importlinter] hold, and what they are for does too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"


def _environment() -> dict[str, str]:
    # This tree's darkroom first: the venv may have another checkout installed.
    return {**os.environ, "PYTHONPATH": str(SERVICES)}


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _imports_pillow(module: str) -> bool:
    code = f"import sys, {module}; sys.exit(10 if 'PIL' in sys.modules else 0)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=_environment(), capture_output=True, timeout=60
    )
    assert result.returncode in (0, 10), result.stderr.decode()
    return result.returncode == 10


@pytest.mark.parametrize("module", ["darkroom.master.app", "darkroom.frontend.app"])
def test_the_api_roles_do_not_load_pillow(module: str) -> None:
    assert not _imports_pillow(module)


def test_the_master_process_does_not_load_pillow() -> None:
    assert not _imports_pillow("darkroom.master.service")
