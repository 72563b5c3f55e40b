"""Turning an upload's ``op`` into the canonical pipeline stored in its task, presets resolved.

A preset is pipeline text kept in the registry under ``preset.NAME`` (in Kubernetes, a key of
the watched ConfigMap), read through the discovery cache: a change is seen within
``DISCOVERY_TTL_SECONDS``. It is validated when read, so a wrong preset is refused at upload
with its name, and the task stores the pipeline it resolved to.
"""

from __future__ import annotations

from collections.abc import Callable

from darkroom.contract.pipeline import (
    InvalidPipeline,
    Limits,
    normalize_pipeline,
    preset_key,
    preset_name,
)

# A registry key's value, None when the key is not set.
Lookup = Callable[[str], str | None]


class PipelineResolver:
    """The master's pipeline check: ``op`` text in, canonical pipeline text out.

    Raises InvalidPipeline (a ValueError) saying why an op is refused.
    """

    def __init__(self, lookup: Lookup, limits: Limits, presets_only: bool = False) -> None:
        self._lookup = lookup
        self._limits = limits
        self._presets_only = presets_only

    def __call__(self, text: str | None) -> str:
        name = preset_name(text)
        if name is None:
            if self._presets_only:
                raise InvalidPipeline(
                    "this service runs presets only: send op=preset:NAME, "
                    "with NAME one of the presets it offers"
                )
            return normalize_pipeline(text, self._limits)
        return self._preset(name)

    def _preset(self, name: str) -> str:
        pipeline = self._lookup(preset_key(name))
        if pipeline is None:
            raise InvalidPipeline(f"unknown preset {name!r}: no {preset_key(name)} in the registry")
        try:
            return normalize_pipeline(pipeline, self._limits)
        except InvalidPipeline as exc:
            raise InvalidPipeline(f"preset {name!r} is invalid: {exc}") from None
