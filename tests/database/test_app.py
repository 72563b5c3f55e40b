from __future__ import annotations

import sqlite3

import pytest
from falcon import testing

from darkroom.database.app import create_app
from darkroom.database.service import open_store


@pytest.fixture
def client(config) -> testing.TestClient:
    return testing.TestClient(create_app(config, open_store(config)))


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
