"""A job's webhook delivery as it travels between the database and the master, and to clients.

One delivery per job: armed when the job is created with ``webhook=URL``, due when the job
ends (finished, failed, cancelled), then retried until it is delivered or given up.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from collections.abc import Mapping
from typing import Any

# The longest webhook URL a job may carry (the master refuses longer; the database too).
MAX_WEBHOOK_URL_CHARS = 2_000
# How many of the last attempts' outcomes a delivery keeps (and /status shows).
KEPT_ATTEMPTS = 5
# The longest error text an attempt's outcome keeps.
MAX_ATTEMPT_ERROR_CHARS = 300


class DeliveryState(enum.StrEnum):
    """A delivery's state; the value is its name on the wire (``webhook.state`` in /status)."""

    PENDING = "pending"  # the job has not ended yet, or an attempt is due
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # given up: a 410 answer, or the retry period ran out


def message_id(task_id: str, sequence: int = 1) -> str:
    """The ``webhook-id`` of a job's delivery: the same for every retry of it.

    ``sequence`` counts the job's endings: an operator's retry of a failed job that then ends
    again makes a new message (``msg_<id>_2``), which receivers do not drop as a duplicate.
    """
    return f"msg_{task_id}" if sequence <= 1 else f"msg_{task_id}_{sequence}"


def redacted_url(url: str) -> str:
    """``url`` fit to show: its query string (where tokens travel) replaced, no credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "redacted" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One attempt's outcome: the receiver's HTTP status, or why there was none."""

    at: float  # epoch seconds
    status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "status": self.status, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(float(data["at"]), data.get("status"), data.get("error"))
