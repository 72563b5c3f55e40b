"""Live progress over real processes: Server-Sent Events from the master and the frontend."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest
import requests

from support.images import png_bytes
from support.jobs import upload
from support.sse import events_in, messages

pytestmark = pytest.mark.e2e

PIPELINE = "grayscale,resize:8x8,flip"
STAGES = ["download", "decode", "grayscale", "resize:8x8", "flip", "encode", "store"]
READ_SECONDS = 30


class RawStream:
    """An event stream read line by line off the socket (http.client): what arrives, when."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=READ_SECONDS
        )
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        self.response = self._connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type") == "text/event-stream"
        self.closed = False

    def _lines(self):
        while line := self.response.readline():
            yield line.decode().rstrip("\n")
        self.closed = True  # the server ended the stream

    def events(self, count: int) -> list[dict]:
        """The next ``count`` events (skipping comments), as soon as each arrives."""
        found = []
        for message in messages(self._lines()):
            if "event" in message:
                found.append(message)
                if len(found) == count:
                    break
        return found

    def rest(self) -> list[dict]:
        """Every event until the server closes the stream."""
        found = [message for message in messages(self._lines()) if "event" in message]
        assert self.closed
        return found

    def close(self) -> None:
        self._connection.close()


def described(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["event"], e["data"].get("state") or e["data"]["stage"]) for e in events]


def test_the_stream_shows_each_state_and_stage_live_in_order_then_closes(services):
    # Everything but the worker: the job cannot end until it starts.
    for role in ("registry", "database", "storage", "master", "frontend"):
        services.start(role)
    task_id = upload(services, png_bytes((32, 24), "RGB"), op=PIPELINE)
    from_master = RawStream(services.url("master", f"/events?id={task_id}"))
    through_frontend = RawStream(services.url("frontend", f"/events?id={task_id}"))
    try:
        for stream in (from_master, through_frontend):
            # arrived while no worker runs: streamed, not held until the end
            first = stream.events(2)
            assert described(first) == [("state", "uploading"), ("state", "queued")]
            assert [e["id"] for e in first] == ["1", "2"]
        started = time.monotonic()
        services.start("worker")
        for stream in (from_master, through_frontend):
            rest = stream.rest()
            assert described(rest) == [
                ("state", "in progress"),
                *(("stage", stage) for stage in STAGES),
                ("state", "finished"),
            ]
            assert [int(e["id"]) for e in rest] == list(range(3, 3 + len(rest)))
            for stage in rest[1:-1]:
                assert stage["data"]["startMs"] >= 0 and stage["data"]["durationMs"] >= 0
        assert time.monotonic() - started < READ_SECONDS
    finally:
        from_master.close()
        through_frontend.close()
    status = requests.get(services.url("master", "/status"), params={"id": task_id}, timeout=10)
    assert status.json()["stage"] == "store"


def test_an_ended_job_replays_and_closes_and_last_event_id_resumes(services):
    services.start_all()
    task_id = upload(services, png_bytes((16, 16), "RGB"), op=PIPELINE)
    ended = requests.get(
        services.url("master", "/status"), params={"id": task_id, "wait": 30}, timeout=40
    ).json()
    assert ended["stateName"] == "finished"
    # opened after the end: replays everything, then the server closes it (no timeout here)
    replay = requests.get(services.url("master", "/events"), params={"id": task_id}, timeout=10)
    events = events_in(replay.text)
    assert described(events)[-1] == ("state", "finished")
    assert [stage for kind, stage in described(events) if kind == "stage"] == STAGES
    # reconnecting as EventSource does: only the later events
    resumed = RawStream(services.url("frontend", f"/events?id={task_id}"), last_event_id="5")
    try:
        later = resumed.rest()
    finally:
        resumed.close()
    assert [e["id"] for e in later] == [e["id"] for e in events[5:]]
    over = requests.get(
        services.url("master", "/events"),
        params={"id": task_id},
        headers={"Last-Event-ID": events[-1]["id"]},
        timeout=10,
    )
    assert over.status_code == 204
