from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from falcon import testing

from darkroom.contract.folders import result_version
from darkroom.database.app import create_app
from darkroom.database.pgstore import PostgresTaskStore, redacted
from darkroom.database.service import open_store, run
from darkroom.database.store import StoreUnavailable
from harness.launch import wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request, config) -> Iterator[testing.TestClient]:
    """The app on either store (``DATABASE_URL`` set or not)."""
    if request.param == "postgresql":
        config = config.replace(database_url=request.getfixturevalue("postgres_url"))
    store = open_store(config)
    try:
        yield testing.TestClient(create_app(config, store))
    finally:
        store.close()


def new_queued(client) -> str:
    created = client.simulate_post("/newTask", params={"pipeline": "grayscale"})
    assert created.status_code == 201
    assert client.simulate_post("/enqueueTask", params={"id": created.text}).text == "success"
    return created.text


def test_task_life_cycle(client):
    task_id = new_queued(client)
    task = client.simulate_get("/getById", params={"id": task_id}).json
    assert task["state"] == 0 and task["stateName"] == "queued"
    assert task["pipeline"] == "grayscale"
    claim = client.simulate_post("/getNewTask").json
    assert claim["id"] == task_id and claim["state"] == 1 and claim["lease"]
    beat = client.simulate_post("/heartbeat", params={"id": task_id, "lease": claim["lease"]})
    assert beat.status_code == 200
    done = client.simulate_post("/finishTask", params={"id": task_id, "lease": claim["lease"]})
    assert done.text == "success"
    assert client.simulate_get("/getById", params={"id": task_id}).json["state"] == 2


def test_nothing_to_claim_is_204(client):
    assert client.simulate_post("/getNewTask").status_code == 204


def test_a_claim_from_a_client_that_has_gone_leases_nothing(client):
    task_id = new_queued(client)
    gone = {"waitress.client_disconnected": lambda: True}  # waitress's own flag
    assert client.simulate_post("/getNewTask", extras=gone).status_code == 204
    assert client.simulate_post("/getNewTask").json["id"] == task_id


@pytest.mark.parametrize(
    "bad_id", ["1", "-1", "../../etc/passwd", "A" * 21, "A" * 23, "A" * 21 + "!"]
)
def test_ids_strictly_validated(client, bad_id):
    result = client.simulate_get("/getById", params={"id": bad_id})
    assert result.status_code == 400
    assert "task id" in result.json["description"]


def test_unknown_id_is_404(client):
    assert client.simulate_get("/getById", params={"id": "A" * 22}).status_code == 404


def test_missing_params_are_400(client):
    assert client.simulate_get("/getById").status_code == 400
    task_id = new_queued(client)
    assert client.simulate_post("/finishTask", params={"id": task_id}).status_code == 400


def test_wrong_lease_is_409(client):
    task_id = new_queued(client)
    client.simulate_post("/getNewTask")
    result = client.simulate_post("/finishTask", params={"id": task_id, "lease": "x"})
    assert result.status_code == 409
    assert "lease" in result.json["description"]


def test_fail_needs_a_reason(client):
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    assert client.simulate_post(
        "/failTask", params={"id": task_id, "lease": lease}
    ).status_code == (400)
    failed = client.simulate_post(
        "/failTask", params={"id": task_id, "lease": lease, "error": "corrupt image"}
    )
    assert failed.json["stateName"] == "failed" and failed.json["error"] == "corrupt image"


def test_set_by_id_allows_only_retry_fail_and_cancel(client):
    task_id = new_queued(client)

    def state_of(task_id: str) -> tuple[str, str | None]:
        task = client.simulate_get("/getById", params={"id": task_id}).json
        return task["stateName"], task["error"]

    assert client.simulate_post("/setById", json={"id": task_id, "state": 2}).status_code == 409
    # 3 fails a waiting task, as in the seed; 0 retries it
    assert client.simulate_post("/setById", json={"id": task_id, "state": 3}).status_code == 200
    assert state_of(task_id) == ("failed", "failed by an operator")
    assert client.simulate_post("/setById", json={"id": task_id, "state": 0}).status_code == 200
    assert state_of(task_id)[0] == "queued"
    # 4 cancels, as /cancelTask does
    assert client.simulate_post("/setById", json={"id": task_id, "state": 4}).status_code == 200
    assert state_of(task_id)[0] == "cancelled"
    assert client.simulate_post("/setById", json={"id": task_id, "state": 0}).status_code == 409
    assert client.simulate_post("/setById", json={"id": "1", "state": 0}).status_code == 400
    assert client.simulate_post("/setById", json=[1]).status_code == 400


def test_set_by_id_state_3_needs_a_waiting_task(client):
    task_id = new_queued(client)
    client.simulate_post("/getNewTask")
    refused = client.simulate_post("/setById", json={"id": task_id, "state": 3})
    assert refused.status_code == 409 and "in progress" in refused.json["description"]


def test_cancel_task_answers_its_document_and_refuses_an_ended_one(client):
    task_id = new_queued(client)
    cancelled = client.simulate_post("/cancelTask", params={"id": task_id})
    assert cancelled.status_code == 200
    assert cancelled.json["stateName"] == "cancelled" and cancelled.json["state"] == 4
    assert cancelled.json["finishedAt"] is not None
    again = client.simulate_post("/cancelTask", params={"id": task_id})
    assert again.status_code == 200 and again.json == cancelled.json
    finished = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    client.simulate_post("/finishTask", params={"id": finished, "lease": lease})
    refused = client.simulate_post("/cancelTask", params={"id": finished})
    assert refused.status_code == 409 and refused.json["title"] == "Task conflict"
    assert "finished" in refused.json["description"]
    assert client.simulate_post("/cancelTask", params={"id": "A" * 22}).status_code == 404
    assert client.simulate_post("/cancelTask", params={"id": "bad"}).status_code == 400


@pytest.mark.parametrize("route", ["/heartbeat", "/finishTask", "/failTask", "/releaseTask"])
def test_a_cancelled_tasks_holder_is_told_so(client, route):
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    client.simulate_post("/cancelTask", params={"id": task_id})
    params = {"id": task_id, "lease": lease, "error": "boom"}
    refused = client.simulate_post(route, params=params)
    assert refused.status_code == 409 and refused.json["title"] == "Task cancelled"
    lost = client.simulate_post(route, params={**params, "id": new_queued(client)})
    assert lost.status_code == 409 and lost.json["title"] == "Task conflict", (
        "lost is not cancelled"
    )


def test_an_idempotency_key_names_its_task(client):
    params = {"pipeline": "swap", "idempotencyKey": "key-1"}
    created = client.simulate_post("/newTask", params=params)
    assert created.status_code == 201
    task_id = created.text
    holder = client.simulate_post("/newTask", params=params)
    assert holder.status_code == 200
    assert holder.json == {
        "id": task_id,
        "pipeline": "swap",
        "stateName": "uploading",
        "bodySha256": None,
    }
    sha = "0f" * 32
    enqueued = client.simulate_post("/enqueueTask", params={"id": task_id, "bodySha256": sha})
    assert enqueued.status_code == 200
    holder = client.simulate_post("/newTask", params=params).json
    assert holder["bodySha256"] == sha and holder["stateName"] == "queued"
    task = client.simulate_get("/getById", params={"id": task_id}).json
    assert task["hasIdempotencyKey"] is True


@pytest.mark.parametrize(
    ("route", "params"),
    [
        ("/newTask", {"idempotencyKey": "with space"}),
        ("/newTask", {"idempotencyKey": "x" * 256}),
        ("/newTask", {"idempotencyKey": "caf\u00e9"}),
        ("/enqueueTask", {"id": "A" * 22, "bodySha256": "ABC"}),
        ("/enqueueTask", {"id": "A" * 22, "bodySha256": "0F" * 32}),
    ],
)
def test_malformed_keys_and_fingerprints_are_400(client, route, params):
    refused = client.simulate_post(route, params=params)
    assert refused.status_code == 400
    assert "must be" in refused.json["description"]


def test_list(client):
    task_id = new_queued(client)
    assert client.simulate_get("/list").text == f"{task_id} 0 queued\n"


class FullDisk:
    def create(self, pipeline, **options):
        raise sqlite3.OperationalError("database or disk is full")


def test_full_disk_is_507(config):
    client = testing.TestClient(create_app(config, FullDisk()))
    result = client.simulate_post("/newTask")
    assert result.status_code == 507
    assert "no space" in result.json["description"]


def test_get_by_id_long_poll_parameters(client):
    task_id = new_queued(client)
    params = {"id": task_id, "wait": "5", "state": "in progress"}
    answer = client.simulate_get("/getById", params=params)
    assert answer.json["stateName"] == "queued", "not in the given state: answered at once"
    bad = client.simulate_get("/getById", params={**params, "state": "done"})
    assert bad.status_code == 400 and "in progress" in bad.json["description"]
    nan = client.simulate_get("/getById", params={"id": task_id, "wait": "nan"})
    assert nan.status_code == 400


def test_finish_notes_are_listed_in_the_task(client):
    task_id = new_queued(client)
    claim = client.simulate_post("/getNewTask").json
    params = {"id": task_id, "lease": claim["lease"], "note": ["a", " ", "b"]}
    assert client.simulate_post("/finishTask", params=params).text == "success"
    task = client.simulate_get("/getById", params={"id": task_id}).json
    assert task["notes"] == ["a", "b"] and task["error"] == "a; b"


# -- events (issue 16's live progress) ---------------------------------------------------------


def test_events_list_state_changes_and_the_stages_sent_with_heartbeat_and_finish(client):
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    stages = '[{"stage":"download","startMs":0,"durationMs":1.5}]'
    beat = client.simulate_post(
        "/heartbeat", params={"id": task_id, "lease": lease, "stages": stages}
    )
    assert beat.status_code == 200
    last = json.dumps(
        [
            {"stage": "encode", "startMs": 2, "durationMs": 3},
            {"stage": "store", "startMs": 5, "durationMs": 1},
        ]
    )
    done = client.simulate_post(
        "/finishTask", params={"id": task_id, "lease": lease, "stages": last}
    )
    assert done.status_code == 200
    events = client.simulate_get("/events", params={"id": task_id}).json
    assert [event["id"] for event in events] == list(range(1, 8))
    assert [
        (event["kind"], event["data"].get("state") or event["data"]["stage"]) for event in events
    ] == [
        ("state", "uploading"),
        ("state", "queued"),
        ("state", "in progress"),
        ("stage", "download"),
        ("stage", "encode"),
        ("stage", "store"),
        ("state", "finished"),
    ]
    assert events[3]["data"] == {"stage": "download", "startMs": 0.0, "durationMs": 1.5}
    assert events[0]["at"].endswith("+00:00")
    assert client.simulate_get("/getById", params={"id": task_id}).json["stage"] == "store"
    later = client.simulate_get("/events", params={"id": task_id, "after": 5}).json
    assert [event["id"] for event in later] == [6, 7]


def test_events_long_poll_answers_empty_at_its_deadline(client):
    task_id = new_queued(client)
    params = {"id": task_id, "after": 2, "wait": 0.2}
    started = time.monotonic()
    assert client.simulate_get("/events", params=params).json == []
    assert time.monotonic() - started >= 0.2


class WaitSignalled:
    """A store that says when a request is waiting in ``events`` (so it holds the slot)."""

    def __init__(self, store) -> None:
        self._store = store
        self.waiting = threading.Event()

    def events(self, task_id, after=0, wait_seconds=0.0):
        if wait_seconds > 0:
            self.waiting.set()
        return self._store.events(task_id, after, wait_seconds)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_events_long_poll_without_a_slot_is_503(config):
    store = WaitSignalled(open_store(config))
    client = testing.TestClient(create_app(config.replace(threads=2), store))  # one slot
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    params = {"id": task_id, "after": 3}
    held = {}

    def hold_the_slot() -> None:  # until a new event ends the wait
        held["answer"] = client.simulate_get("/events", params={**params, "wait": 30})

    waiting = threading.Thread(target=hold_the_slot)
    waiting.start()
    try:
        assert store.waiting.wait(10), "the first request waits, holding the only slot"
        asked = client.simulate_get("/events", params={**params, "wait": 0.01})
        assert asked.status_code == 503 and asked.headers["retry-after"] == "1"
    finally:
        stage = '[{"stage": "download", "startMs": 0, "durationMs": 1}]'
        client.simulate_post("/heartbeat", params={"id": task_id, "lease": lease, "stages": stage})
        waiting.join(30)
    assert held["answer"].status_code == 200 and len(held["answer"].json) == 1


@pytest.mark.parametrize(
    "stages",
    [
        "not json",
        '{"stage": "x"}',
        '[{"stage": "x", "startMs": -1, "durationMs": 1}]',
        '[{"stage": "x", "startMs": 0, "durationMs": NaN}]',
        '[{"stage": "", "startMs": 0, "durationMs": 1}]',
        '[{"stage": "x", "startMs": true, "durationMs": 1}]',
        "[" + ",".join(['{"stage":"x","startMs":0,"durationMs":1}'] * 65) + "]",
    ],
)
def test_bad_stages_are_400_and_change_nothing(client, stages):
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    result = client.simulate_post(
        "/finishTask", params={"id": task_id, "lease": lease, "stages": stages}
    )
    assert result.status_code == 400 and "stages" in result.json["description"]
    assert (
        client.simulate_get("/getById", params={"id": task_id}).json["stateName"] == "in progress"
    )


@pytest.mark.parametrize(
    "params", [{"after": "-1"}, {"after": "x"}, {"after": "9" * 19}, {"wait": "nan"}]
)
def test_bad_events_params_are_400(client, params):
    task_id = new_queued(client)
    assert client.simulate_get("/events", params={"id": task_id, **params}).status_code == 400


def test_events_of_an_unknown_task_are_404(client):
    assert client.simulate_get("/events", params={"id": "A" * 22}).status_code == 404


class Unreachable:
    def create(self, pipeline, **options):
        raise StoreUnavailable("connection refused")


def test_an_unreachable_database_is_503_with_a_retry_after(config):
    client = testing.TestClient(create_app(config, Unreachable()))
    result = client.simulate_post("/newTask")
    assert result.status_code == 503
    assert result.headers["Retry-After"] == "1"
    assert result.json["title"] == "Database unavailable"


def test_database_url_puts_the_tasks_in_postgresql(config, postgres_server, postgres_url):
    config = config.replace(database_url=postgres_url, database_pool_size=3)
    store = open_store(config)
    try:
        assert isinstance(store, PostgresTaskStore)
        assert store.pool_size == 3
        client = testing.TestClient(create_app(config, store))
        task_id = new_queued(client)
        postgres_server.stop()
        try:
            down = client.simulate_get("/getById", params={"id": task_id})
            assert down.status_code == 503, down.text
            assert "127.0.0.1" not in down.text, "addresses are for the log only"
        finally:
            postgres_server.start()

        def back() -> bool:  # the pool reconnects by itself, with a backoff
            answer = client.simulate_get("/getById", params={"id": task_id})
            return answer.status_code == 200 and answer.json["state"] == 0

        wait_until(back, 15, "the store reconnected")
    finally:
        store.close()


def test_the_database_url_is_logged_without_its_password(config, caplog):
    url = "postgresql://darkroom:s3cret@127.0.0.1:1/tasks"
    assert "s3cret" not in redacted(url) and "127.0.0.1" in redacted(url)
    assert "s3cret" not in repr(config.replace(database_url=url))
    with caplog.at_level("INFO"), pytest.raises(SystemExit):
        run(config.replace(database_url=url))  # nothing listens on port 1
    logged = [str(record.__dict__) for record in caplog.records]
    assert any("127.0.0.1" in line for line in logged), "where the tasks are is logged"
    assert not any("s3cret" in line for line in logged)


def test_a_malformed_database_url_is_refused_without_quoting_it(config):
    with pytest.raises(ValueError, match="DARKROOM_DATABASE_URL") as refused:
        open_store(config.replace(database_url="postgresql://darkroom:s3cret@[::1"))
    assert "s3cret" not in str(refused.value)


def test_nul_characters_never_reach_the_store(client):
    """PostgreSQL's text holds none (the property test found it): a pipeline or webhook URL
    with one is refused, a worker's error or note is kept without them, on either store."""
    for params in ({"pipeline": "swap\x00"}, {"webhook": "https://hooks.example/\x00"}):
        refused = client.simulate_post("/newTask", params=params)
        assert refused.status_code == 400 and "NUL" in refused.json["description"]
    task_id = new_queued(client)
    lease = client.simulate_post("/getNewTask").json["lease"]
    params = {"id": task_id, "lease": lease, "error": "bad\x00 byte", "retry": "true"}
    assert client.simulate_post("/failTask", params=params).json["error"] == "bad byte"
    lease = client.simulate_post("/getNewTask").json["lease"]
    params = {"id": task_id, "lease": lease, "note": "kept\x00"}
    assert client.simulate_post("/finishTask", params=params).text == "success"
    assert client.simulate_get("/getById", params={"id": task_id}).json["notes"] == ["kept"]


# -- the feed of ended tasks ---------------------------------------------------------------
def test_the_feed_tells_the_ends_after_a_followers_position(client):
    start = client.simulate_get("/endedTasks").json
    assert start["reset"] and start["ended"] == []
    task_id = new_queued(client)
    claim = client.simulate_post("/getNewTask").json
    client.simulate_post("/finishTask", params={"id": task_id, "lease": claim["lease"]})
    params = {"epoch": start["epoch"], "after": start["position"], "wait": 10}
    answer = client.simulate_get("/endedTasks", params=params).json
    assert answer == {
        "epoch": start["epoch"],
        "position": start["position"] + 1,
        "ended": [
            {"id": task_id, "stateName": "finished", "result": result_version(claim["lease"])}
        ],
        "reset": False,
    }


def test_a_follower_of_another_epoch_is_told_to_start_over(client):
    answer = client.simulate_get("/endedTasks", params={"epoch": "0123456789abcdef", "after": 3})
    assert answer.status_code == 200 and answer.json["reset"]


@pytest.mark.parametrize(
    "params",
    [
        {"epoch": "xyz"},
        {"epoch": "0123456789ABCDEF"},
        {"after": "-1"},
        {"after": "a"},
        {"wait": "x"},
    ],
)
def test_bad_feed_params_are_400(client, params):
    answer = client.simulate_get("/endedTasks", params=params)
    assert answer.status_code == 400 and answer.json["title"]
