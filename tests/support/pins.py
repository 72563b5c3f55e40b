"""The versions requirements/constraints.txt pins, by normalised project name."""

from __future__ import annotations

import re
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[2] / "requirements" / "constraints.txt"


def normal_name(name: str) -> str:
    """A project name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
    text = CONSTRAINTS.read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE)
    return {normal_name(name): version for name, version in pins}
