"""Reading a Server-Sent Events stream as the tests need it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Each message of an event stream (its lines), as {"id", "event", "data"} or {"comment"},
    ``retry`` fields as {"retry"}; data parsed as JSON."""
    fields: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = json.loads(value) if name == "data" else value
    if fields:
        yield fields


def events_in(text: str) -> list[dict[str, Any]]:
    """The events (not comments or retry fields) of a whole stream's text."""
    return [message for message in messages(text.split("\n")) if "event" in message]
