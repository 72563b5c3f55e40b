"""Live progress: ``GET /events?id=`` streams a job's events as Server-Sent Events.

The events are in the task store (``GET /events`` of the database), so any master streams any
job. Each is sent as ``id:`` (its number), ``event:`` (``state`` or ``stage``) and ``data:``
(JSON: the state's name, or the stage's name and timings, with the time it was written). The
stream closes after the event of an ended state, and at once, after replaying, for a job that
had already ended; ``Last-Event-ID`` (sent by EventSource when it reconnects) resumes after that
event. A job that ended with no events after ``Last-Event-ID`` answers 204, which tells
EventSource not to reconnect.

A stream holds a server thread, so only so many are open at once (over that: 503 and
Retry-After), each for a bounded time, after which the client reconnects; a comment line every
``keepalive_seconds`` keeps proxies and the clients' read timeouts from cutting an idle stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

import falcon

from darkroom.contract.errors import ServiceError, ServiceUnavailable
from darkroom.contract.events import MAX_EVENT_NUMBER, MEDIA_EVENT_STREAM, EventKind
from darkroom.contract.tasks import TaskState
from darkroom.core.auth import CLIENT
from darkroom.core.ids import require_task_id
from darkroom.core.streams import StreamSlots
from darkroom.database.client import DatabaseClient

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EventStreamPolicy:
    # a comment line this often on an idle stream, and the database's long poll holds it no
    # longer: under the clients' and proxies' read timeouts (30 s here, 60 s for nginx), and a
    # client that left is noticed at the next write, so its slot is back within this (and a
    # frontend's relayed stream, and the master's under it, end then too)
    keepalive_seconds: float = 2.0
    # a stream ends after this long and the client reconnects with Last-Event-ID: a thread is
    # never held for good, and a stream moves to a master that started since
    max_stream_seconds: float = 300.0
    # how long EventSource waits before reconnecting (the stream's ``retry:`` field)
    retry_ms: int = 1000
    # streams open at once; None: a quarter of the threads (long polls may hold half)
    max_streams: int | None = None
    # the wait before asking again when the database has no long-poll slot free
    busy_retry_seconds: float = 1.0


def last_event_id(req: falcon.Request) -> int:
    """The number of the last event the client has (0: none), from ``Last-Event-ID``."""
    raw = req.get_header("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return 0
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_EVENT_NUMBER:
        raise falcon.HTTPBadRequest(
            title="Invalid Last-Event-ID",
            description="Last-Event-ID must be the number of an event of this job (its id: line).",
        )
    return int(raw)


def sse_message(event: dict[str, Any]) -> bytes:
    """One database event document as a Server-Sent Event (its JSON holds no newline)."""
    data = json.dumps({**event["data"], "at": event["at"]}, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n".encode()


def ends_the_stream(event: dict[str, Any]) -> bool:
    if event["kind"] != EventKind.STATE:
        return False
    try:
        return TaskState.parse(event["data"]["state"]).ended
    except (KeyError, ValueError):
        return False


class EventStreams:
    """``GET /events?id=``: the job's events as they happen (client auth)."""

    auth = CLIENT

    def __init__(
        self,
        database: DatabaseClient,
        policy: EventStreamPolicy,
        threads: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._policy = policy
        limit = policy.max_streams if policy.max_streams is not None else threads // 4
        self._slots = StreamSlots(limit)
        self._clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        after = last_event_id(req)
        # Before the stream starts, so that a bad id answers 404 as JSON.
        events = self._database.events(task_id, after)
        if not events and self._ended(task_id):
            resp.status = falcon.HTTP_204  # nothing more will come: EventSource stops here
            return
        self._slots.take()
        resp.content_type = MEDIA_EVENT_STREAM
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")  # nginx (an ingress) would hold the events
        chunks = self._stream(
            task_id, after, events, self._clock() + self._policy.max_stream_seconds
        )
        resp.stream = self._slots.body(chunks)

    def _ended(self, task_id: str) -> bool:
        return TaskState.parse(self._database.get(task_id)["stateName"]).ended

    def _stream(
        self, task_id: str, after: int, events: list[dict[str, Any]], deadline: float
    ) -> Generator[bytes, None, None]:
        yield f"retry: {self._policy.retry_ms}\n\n".encode()
        while True:
            for event in events:
                yield sse_message(event)
                after = event["id"]
                if ends_the_stream(event):
                    return
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            try:
                wait = min(self._policy.keepalive_seconds, remaining)
                events = self._database.events(task_id, after, wait)
                if not events and self._ended(task_id):
                    # The job ended and nothing came: Last-Event-ID named an event past its
                    # last, which no wait would bring (a stream held for its whole time). Asked
                    # again after the end, so no event written before it is missed.
                    events = self._database.events(task_id, after)
                    if not events:
                        return
            except ServiceUnavailable:
                # The database is busy or restarting: a stream outlives that.
                events = []
                time.sleep(min(self._policy.busy_retry_seconds, remaining))
            except ServiceError as exc:
                log.info("event stream ended", extra={"task": task_id, "error": exc.description})
                return
            if not events:
                yield b": keep-alive\n\n"
