"""A job's events (state changes and processing stages) and its stages on their way to the store.

Every state change of a task, and every stage of its processing, is an event in the task store,
numbered per task from 1 (``GET /events``; the master streams them as Server-Sent Events).

The worker times each stage of an attempt (download, decode, each pipeline step by its text,
encode, store) from the moment it claimed the task, and sends the stages with its heartbeats
and its finish or fail call as one JSON ``stages`` parameter: a list of
``{"stage": name, "startMs": offset, "durationMs": duration}``. The same object, with the time
the store wrote it, is the ``data`` of a ``stage`` event (``GET /events``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable
from typing import Any

# The media type of the master's (and the frontend's) ``/events``.
MEDIA_EVENT_STREAM = "text/event-stream"


class EventKind(enum.StrEnum):
    """What an event tells; the value is its name on the wire (the SSE ``event:`` field)."""

    STATE = "state"  # data: {"state": the new state's name}
    STAGE = "stage"  # data: a Stage's document


# The largest event number a client may name (``after``, ``Last-Event-ID``): 18 digits, which
# the stores' 64-bit integers hold.
MAX_EVENT_NUMBER = 10**18 - 1
# At most this many stages per call: an attempt has at most 4 + MAX_STEPS (10) of them.
MAX_STAGES_PER_CALL = 64
# A stage's name is cut to this many characters (a step's text, its watermark label and all).
MAX_STAGE_NAME_CHARS = 200
# Longest JSON ``stages`` parameter taken (64 stages of the longest name fit in it).
MAX_STAGES_PARAM_CHARS = 32 * 1024


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    start_ms: float  # since the worker claimed the task
    duration_ms: float

    def document(self) -> dict[str, Any]:
        return {"stage": self.name, "startMs": self.start_ms, "durationMs": self.duration_ms}


def encode_stages(stages: Iterable[Stage]) -> str:
    return json.dumps([stage.document() for stage in stages], separators=(",", ":"))


def parse_stages(text: str | None) -> tuple[Stage, ...]:
    """The stages in a ``stages`` parameter (none when absent); ValueError saying what is wrong."""
    if not text:
        return ()
    if len(text) > MAX_STAGES_PARAM_CHARS:
        raise ValueError(f"stages must be at most {MAX_STAGES_PARAM_CHARS} characters of JSON")
    try:
        documents = json.loads(text)
    except ValueError:
        raise ValueError("stages must be a JSON list") from None
    if not isinstance(documents, list) or len(documents) > MAX_STAGES_PER_CALL:
        raise ValueError(f"stages must be a JSON list of at most {MAX_STAGES_PER_CALL} stages")
    return tuple(_stage(document) for document in documents)


def _stage(document: Any) -> Stage:
    if not isinstance(document, dict) or not isinstance(document.get("stage"), str):
        raise ValueError('each stage is {"stage": name, "startMs": ms, "durationMs": ms}')
    name = document["stage"].strip()[:MAX_STAGE_NAME_CHARS]
    if not name:
        raise ValueError("a stage needs a name")
    return Stage(name, _milliseconds(document, "startMs"), _milliseconds(document, "durationMs"))


def _milliseconds(document: dict[str, Any], key: str) -> float:
    value = document.get(key)
    # bool is an int to Python, never a time; NaN and infinities pass every bound
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"a stage's {key} must be a number of milliseconds")
    if value < 0:
        raise ValueError(f"a stage's {key} must not be negative")
    return float(value)
