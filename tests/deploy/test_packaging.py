"""The pinned installs and what git keeps out, checked offline (test_fresh_machine.py runs them)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from support.pins import normal_name, pinned_versions

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = "requirements/constraints.txt"


def test_every_dependency_and_extra_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    names = {normal_name(re.match(r"[A-Za-z0-9_.-]+", w).group()) for w in wanted}  # type: ignore[union-attr]
    assert names - pinned_versions().keys() == set()


def test_the_constraints_file_names_its_refresh_command() -> None:
    assert "#    scripts/lock.sh\n" in (ROOT / CONSTRAINTS).read_text()
    assert "scripts/lock.sh" in (ROOT / "README.md").read_text()


def test_the_image_build_installs_the_pins() -> None:
    dockerfile = (ROOT / "images" / "Dockerfile").read_text()
    installs = re.findall(r"pip --python \S+ install\s+\\?\s*(.*)", dockerfile)
    assert len(installs) == 2
    assert all(i.startswith(f"-c {CONSTRAINTS} ") for i in installs), installs
    # .dockerignore: everything out, then the package and requirements/ back in.
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!requirements/" in ignored


def test_the_scripts_install_the_pins() -> None:
    venv = (ROOT / "scripts" / "lib" / "venv.sh").read_text()
    assert f"CONSTRAINTS={CONSTRAINTS}" in venv
    assert re.search(r'pip install .*-c "\$CONSTRAINTS"', venv)
    for script in ("run.sh", "test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "source scripts/lib/venv.sh" in text
        assert "pinned_install -e " in text


def test_git_ignores_the_data_directory_and_the_venv() -> None:
    paths = ["darkroom-data/internal-token", ".venv/bin/python"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.split() == paths, result.stderr


def _names(specs: list[str]) -> set[str]:
    return {normal_name(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def test_what_the_images_install_bundles_no_gpl_encoder() -> None:
    """The images install the runtime dependencies only; pillow-heif's wheels bundle the x265
    encoder (GPL-2), so HEIF is decoded with pi-heif there and pillow-heif is a test tool."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    assert "pi-heif" in runtime
    assert "pillow-heif" not in runtime
    assert "pillow-heif" in _names(project["optional-dependencies"]["test"])
