"""The master's GET /events: a job's events as Server-Sent Events."""

from __future__ import annotations

import json

import falcon
import pytest
from falcon import testing

from darkroom.contract.errors import ServiceUnavailable
from darkroom.contract.folders import result_version
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.service import open_store
from darkroom.master.app import create_app
from darkroom.master.events import EventStreamPolicy, EventStreams
from master.test_app import check_pipeline
from support.inprocess import service_client, storage_by
from support.sse import events_in, messages

FAST = EventStreamPolicy(keepalive_seconds=0.05, max_stream_seconds=0.5, max_streams=1)
FAST_RETRY = EventStreamPolicy(busy_retry_seconds=0.01, max_stream_seconds=5)
STAGES = [
    {"stage": "download", "startMs": 0, "durationMs": 1},
    {"stage": "decode", "startMs": 1, "durationMs": 2},
    {"stage": "swap", "startMs": 3, "durationMs": 0.5},
    {"stage": "encode", "startMs": 3.5, "durationMs": 2},
    {"stage": "store", "startMs": 5.5, "durationMs": 1},
]


@pytest.fixture
def app(config):
    tasks = open_store(config)
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage = storage_by("api", config)
    return create_app(config, DatabaseClient(database), storage, check_pipeline, event_streams=FAST)


@pytest.fixture
def client(app) -> testing.TestClient:
    return testing.TestClient(app)


def queued_job(client, png) -> str:
    return client.simulate_post("/new", body=png).text


def finished_job(client, config, png) -> str:
    """A job through a worker's calls: claimed, stages with a heartbeat and the finish."""
    task_id = queued_job(client, png)
    claim = client.simulate_post("/getNewTask").json
    lease = {"id": task_id, "lease": claim["lease"]}
    beat = client.simulate_post("/heartbeat", params={**lease, "stages": json.dumps(STAGES[:2])})
    assert beat.status_code == 200
    (config.data_dir / "finished" / f"{task_id}.{result_version(claim['lease'])}").write_bytes(png)
    finish = {**lease, "stages": json.dumps(STAGES[2:])}
    assert client.simulate_post("/registerTaskFinished", params=finish).status_code == 200
    return task_id


def test_an_ended_job_replays_every_event_in_order_then_closes(client, config, png):
    task_id = finished_job(client, config, png)
    result = client.simulate_get("/events", params={"id": task_id})
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.headers["cache-control"] == "no-cache"
    assert result.text.startswith("retry: 1000\n\n")
    events = events_in(result.text)
    assert [event["id"] for event in events] == [str(n) for n in range(1, 10)]
    assert [
        (event["event"], event["data"].get("state") or event["data"]["stage"]) for event in events
    ] == [
        ("state", "uploading"),
        ("state", "queued"),
        ("state", "in progress"),
        *(("stage", stage["stage"]) for stage in STAGES),
        ("state", "finished"),
    ]
    assert events[4]["data"] == {
        **STAGES[1],
        "startMs": 1.0,
        "durationMs": 2.0,
        "at": events[4]["data"]["at"],
    }
    assert events[-1]["data"]["at"].endswith("+00:00")
    assert ": keep-alive" not in result.text  # closed at once, not after waiting


def test_last_event_id_resumes_after_that_event(client, config, png):
    task_id = finished_job(client, config, png)
    result = client.simulate_get("/events", params={"id": task_id}, headers={"Last-Event-ID": "6"})
    assert [event["id"] for event in events_in(result.text)] == ["7", "8", "9"]


def test_an_ended_job_with_nothing_after_last_event_id_is_204(client, config, png):
    task_id = finished_job(client, config, png)
    result = client.simulate_get("/events", params={"id": task_id}, headers={"Last-Event-ID": "9"})
    assert result.status_code == 204 and result.text == ""


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "9" * 19, "1 2"])
def test_a_bad_last_event_id_is_400_json(client, png, bad):
    task_id = queued_job(client, png)
    result = client.simulate_get("/events", params={"id": task_id}, headers={"Last-Event-ID": bad})
    assert result.status_code == 400
    assert result.json["title"] == "Invalid Last-Event-ID"


def test_an_unknown_job_is_404_json_and_a_bad_id_400(client):
    assert client.simulate_get("/events", params={"id": "A" * 22}).status_code == 404
    assert client.simulate_get("/events", params={"id": "A" * 22}).json["title"]
    assert client.simulate_get("/events", params={"id": "nope"}).status_code == 400


def test_an_idle_stream_sends_keep_alives_and_ends_in_bounded_time(client, png):
    task_id = queued_job(client, png)
    result = client.simulate_get("/events", params={"id": task_id})
    found = list(messages(result.text.split("\n")))
    assert {"comment": "keep-alive"} in found
    assert [event["data"]["state"] for event in events_in(result.text)] == ["uploading", "queued"]


def test_open_streams_are_bounded_and_a_closed_one_gives_its_slot_back(app, client, png):
    task_id = queued_job(client, png)
    environ = testing.create_environ("/events", query_string=f"id={task_id}")
    statuses: list[str] = []
    body = app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"]
    refused = client.simulate_get("/events", params={"id": task_id})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json["title"] == "Too many event streams"
    body.close()  # the client went away: the server closes the body
    assert client.simulate_get("/events", params={"id": task_id}).status_code == 200


def test_status_shows_the_stage_reached(client, config, png):
    task_id = finished_job(client, config, png)
    assert client.simulate_get("/status", params={"id": task_id}).json["stage"] == "store"
    assert (
        client.simulate_get("/status", params={"id": queued_job(client, png)}).json["stage"] is None
    )


class BusyThenFinishedDatabase:
    """A database whose long poll is refused once (no slot), then tells the job finished."""

    def __init__(self) -> None:
        self.answers: list[list[dict] | Exception] = [
            [],  # nothing after Last-Event-ID yet
            ServiceUnavailable("database", 503, "Too many waiting requests", "ask again"),
            [{"id": 4, "kind": "state", "at": "t", "data": {"state": "finished"}}],
        ]

    def events(self, task_id: str, after: int = 0, wait: float = 0.0) -> list[dict]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get(self, task_id: str) -> dict:
        return {"stateName": "in progress"}


def test_a_stream_outlives_a_busy_database():
    streams = EventStreams(BusyThenFinishedDatabase(), FAST_RETRY, threads=8)
    app = falcon.App()
    app.add_route("/events", streams)
    result = testing.TestClient(app).simulate_get(
        "/events", params={"id": "A" * 22}, headers={"Last-Event-ID": "3"}
    )
    assert [event["data"]["state"] for event in events_in(result.text)] == ["finished"]


class EndsWhileStreamingDatabase:
    """A job in progress with no event after Last-Event-ID, that ends while it is streamed."""

    def __init__(self) -> None:
        self.states = ["in progress", "finished"]

    def events(self, task_id: str, after: int = 0, wait: float = 0.0) -> list[dict]:
        return []

    def get(self, task_id: str) -> dict:
        return {"stateName": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


class TickingClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_last_event_id_past_the_jobs_last_event_ends_the_stream_when_the_job_ends():
    """It kept the stream (and its slot) open with keep-alives until max_stream_seconds."""
    policy = EventStreamPolicy(keepalive_seconds=1, max_stream_seconds=100)
    streams = EventStreams(EndsWhileStreamingDatabase(), policy, threads=8, clock=TickingClock())
    app = falcon.App()
    app.add_route("/events", streams)
    result = testing.TestClient(app).simulate_get(
        "/events", params={"id": "A" * 22}, headers={"Last-Event-ID": "50"}
    )
    assert result.status_code == 200
    assert result.text.count(": keep-alive") == 0, "closed once the job had ended"
