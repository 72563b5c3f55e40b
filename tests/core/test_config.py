"""Configuration: one home for every default, documented in the README."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from darkroom.core.config import Config
from darkroom.database.store import LeasePolicy
from darkroom.worker.operations import ProcessingSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_settings() -> dict[str, str]:
    """Each setting named in the README's configuration table, with its default cell."""
    text = README.read_text()
    table = text[text.index("| name | default | meaning |") :].split("\n\n", 1)[0]
    settings = {}
    for row in table.splitlines()[2:]:
        names_cell, default_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([A-Z_]+)`", names_cell)
        defaults = [d.strip() for d in default_cell.split(",")]
        for index, name in enumerate(names):
            settings[name] = defaults[index] if len(defaults) == len(names) else default_cell
    return settings


def test_every_setting_is_in_the_readme_table() -> None:
    documented = _readme_settings()
    fields = {field.name.upper() for field in dataclasses.fields(Config)}
    assert sorted(fields - set(documented)) == [], "add these to the README's table"
    assert sorted(set(documented) - fields) == [], "the README names settings that do not exist"


def test_the_readme_gives_the_numeric_defaults() -> None:
    documented = _readme_settings()
    for field in dataclasses.fields(Config):
        default = documented[field.name.upper()]
        if isinstance(field.default, int | float) and re.fullmatch(r"[0-9.]+", default):
            assert float(default) == field.default, field.name


def test_the_lease_policy_comes_from_the_configuration() -> None:
    config = Config(lease_seconds=7.5, max_attempts=9, upload_timeout_seconds=11.0)
    assert config.settings_for(LeasePolicy) == LeasePolicy(7.5, 9, 11.0)
    assert Config().settings_for(LeasePolicy) == LeasePolicy()


def test_the_processing_settings_come_from_the_configuration() -> None:
    config = Config(max_image_pixels=1234, png_compress_level=6)
    settings = config.settings_for(ProcessingSettings)
    assert (settings.max_image_pixels, settings.png_compress_level) == (1234, 6)
    assert Config().settings_for(ProcessingSettings) == ProcessingSettings()
