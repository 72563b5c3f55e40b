from __future__ import annotations

import datetime
import sqlite3
import threading
import time

import falcon
import pytest
from falcon import testing

from darkroom.contract.folders import result_version
from darkroom.contract.pipeline import PipelineLimits, normalize_pipeline
from darkroom.core.config import Config
from darkroom.core.imagefiles import FileImageStore
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.direct import DirectDatabase
from darkroom.database.service import open_store
from darkroom.master.app import create_app
from darkroom.master.finished import RETENTION_MARGIN_SECONDS, FinishedTasks
from darkroom.master.unfinished import UnfinishedTasks
from darkroom.storage.app import create_app as create_storage_app
from darkroom.storage.client import StorageClient
from harness.launch import wait_until
from support.inprocess import STORAGE_ACCESS, service_client, storage_by


def check_pipeline(text: str | None) -> str:
    return normalize_pipeline(text, PipelineLimits(max_image_pixels=Config.max_image_pixels))


@pytest.fixture
def tasks(config):
    return open_store(config)


@pytest.fixture(params=["api", "direct"])
def database_access(request) -> str:
    """How the master reaches the tasks: the database's app, or a store of its own on the file."""
    return request.param


@pytest.fixture(params=STORAGE_ACCESS)
def client(config, tasks, request, database_access) -> testing.TestClient:
    """The master over the database (its app, or the file itself) and the storage (its app or
    its volume)."""
    service = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    database = (
        DatabaseClient(service)
        if database_access == "api"
        else DirectDatabase(service, open_store(config))
    )
    storage = storage_by(request.param, config)
    return testing.TestClient(create_app(config, database, storage, check_pipeline))


def upload(client, body: bytes) -> str:
    result = client.simulate_post("/new", body=body)
    assert result.status_code == 200, result.text
    return result.text


def test_upload_creates_a_queued_task_with_its_image(client, config, png):
    task_id = upload(client, png)
    status = client.simulate_get("/status", params={"id": task_id}).json
    assert status["stateName"] == "queued" and status["pipeline"] == "swap"
    assert (config.data_dir / "working" / task_id).read_bytes() == png
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "0"


def test_full_worker_cycle_through_master(client, config, png):
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    assert claim["id"] == task_id
    assert client.simulate_post("/getNewTask").status_code == 204
    result = client.simulate_get("/get", params={"id": task_id})
    assert result.status_code == 409 and "in progress" in result.json["description"]
    (config.data_dir / "finished" / f"{task_id}.{result_version(claim['lease'])}").write_bytes(png)
    params = {"id": task_id, "lease": claim["lease"]}
    assert client.simulate_post("/registerTaskFinished", params=params).text == "success"
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "1"
    result = client.simulate_get("/get", params={"id": task_id})
    assert result.status_code == 200
    assert result.content == png
    assert result.headers["content-type"] == "image/png"
    assert f"darkroom-{task_id}.png" in result.headers["content-disposition"]


def test_an_avif_result_is_served_as_avif(client, config, png):
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(100)
    (config.data_dir / "finished" / task_id).write_bytes(avif)
    params = {"id": task_id, "lease": claim["lease"]}
    assert client.simulate_post("/registerTaskFinished", params=params).text == "success"
    result = client.simulate_get("/get", params={"id": task_id})
    assert result.headers["content-type"] == "image/avif"
    assert f"darkroom-{task_id}.avif" in result.headers["content-disposition"]


def test_worker_routes_pass_real_status_through(client, png):
    task_id = upload(client, png)
    client.simulate_post("/getNewTask")
    wrong = client.simulate_post("/registerTaskFinished", params={"id": task_id, "lease": "x"})
    assert wrong.status_code == 409
    assert "lease" in wrong.json["description"]


def test_failed_job_reports_its_error(client, png):
    task_id = upload(client, png)
    lease = client.simulate_post("/getNewTask").json["lease"]
    params = {"id": task_id, "lease": lease, "error": "cannot decode image"}
    assert client.simulate_post("/failTask", params=params).status_code == 200
    for route in ("/get", "/isReady"):
        result = client.simulate_get(route, params={"id": task_id})
        assert result.status_code == 422
        assert "cannot decode image" in result.json["description"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "Send the image"),
        (b"GIF89a but not really", 200, None),
        (b"%PDF-1.4 not an image", 415, "supported format"),
        (b"<svg xmlns=...>", 415, "supported format"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", 200, None),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", 200, None),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", 415, "avif, bmp, gif, heic"),
    ],
)
def test_upload_checks_magic_bytes(client, body, status, message):
    result = client.simulate_post("/new", body=body)
    assert result.status_code == status
    if message:
        assert message in result.json["description"]


def test_upload_over_limit_is_413_and_creates_no_task(client, config, tasks):
    result = client.simulate_post(
        "/new", body=b"\x89PNG\r\n\x1a\n" + b"0" * config.max_upload_bytes
    )
    assert result.status_code == 413
    assert sum(tasks.counts().values()) == 0


def test_invalid_pipeline_is_400(client, png):
    result = client.simulate_post("/new", params={"op": "explode"}, body=png)
    assert result.status_code == 400
    assert "explode" in result.json["description"]


def test_crop_offsets_may_arrive_as_spaces(client, tasks, png):
    # The "+" of crop:WxH+X+Y, left unencoded in a query string, is decoded to a space.
    result = client.simulate_post("/new", query_string="op=crop:4x3+1+2", body=png)
    assert result.status_code == 200, result.text
    assert tasks.get(result.text).pipeline == "crop:4x3+1+2"


def test_a_url_encoded_watermark_keeps_its_text_and_case(client, tasks, png):
    query = "op=RESIZE:8x8:Smart,watermark:%C2%A9%20Dark+Room:Top-Left:0.3"  # "+": a space
    result = client.simulate_post("/new", query_string=query, body=png)
    assert result.status_code == 200, result.text
    pipeline = tasks.get(result.text).pipeline
    assert pipeline == "resize:8x8:smart,watermark:© Dark Room:top-left:0.3"


def test_a_watermark_text_with_a_comma_is_400_saying_why(client, tasks, png):
    result = client.simulate_post("/new", params={"op": "watermark:Hello, world"}, body=png)
    assert result.status_code == 400
    description = result.json["description"]
    assert description.startswith("step 2 'world': unknown operation")
    assert description.endswith("a comma ends a step, so a watermark's TEXT cannot hold one")
    result = client.simulate_post("/new", params={"op": "watermark:a:b:c:d"}, body=png)
    assert "position must be one of" in result.json["description"]
    assert sum(tasks.counts().values()) == 0


def test_repeated_op_is_400_and_creates_no_task(client, tasks, png):
    result = client.simulate_post("/new", query_string="op=flip&op=flop", body=png)
    assert result.status_code == 400
    assert result.json == {
        "title": "Invalid parameter",
        "description": 'The "op" parameter is invalid. Give it once, not 2 times.',
    }
    assert sum(tasks.counts().values()) == 0


@pytest.mark.parametrize("route", ["/get", "/isReady", "/status"])
def test_unknown_and_invalid_ids(client, route):
    assert client.simulate_get(route, params={"id": "A" * 22}).status_code == 404
    assert client.simulate_get(route, params={"id": "1"}).status_code == 400
    assert client.simulate_get(route).status_code == 400


def test_missing_finished_file_is_not_a_200(client, png):
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    client.simulate_post("/registerTaskFinished", params={"id": task_id, "lease": claim["lease"]})
    result = client.simulate_get("/get", params={"id": task_id})
    assert result.status_code == 404
    assert "/" not in result.json["description"], "no internal path leaks"


def test_is_ready_long_poll_answers_when_the_job_finishes(client, config, png):
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    (config.data_dir / "finished" / f"{task_id}.{result_version(claim['lease'])}").write_bytes(png)
    params = {"id": task_id, "lease": claim["lease"]}
    finisher = threading.Timer(
        0.2, client.simulate_post, ("/registerTaskFinished",), {"params": params}
    )
    finisher.start()
    started = time.monotonic()
    answer = client.simulate_get("/isReady", params={"id": task_id, "wait": "20"})
    finisher.join()
    assert answer.text == "1"
    assert time.monotonic() - started < 10, "answered on the finish, not at the wait's end"


def test_status_long_poll_answers_when_the_job_leaves_the_given_state(client, png):
    task_id = upload(client, png)
    # Already out of "in progress": answered at once, with the state it is in.
    answer = client.simulate_get(
        "/status", params={"id": task_id, "wait": "20", "state": "in progress"}
    )
    assert answer.json["stateName"] == "queued"
    started = time.monotonic()
    answer = client.simulate_get(
        "/status", params={"id": task_id, "wait": "0.2", "state": "queued"}
    )
    assert answer.json["stateName"] == "queued" and time.monotonic() - started >= 0.2


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"wait": "nan"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "1", "state": "done"}, "state"),
    ],
)
def test_bad_long_poll_parameters_are_refused(client, png, params, problem):
    task_id = upload(client, png)
    answer = client.simulate_get("/status", params={"id": task_id, **params})
    assert answer.status_code == 400 and problem in answer.json["description"]


def test_a_finished_job_whose_result_is_gone_is_gone(config, tasks, png):
    """The storage's retention sweep may remove a result before the database's removes the job:
    /isReady said 1 while /get said 404, for up to a sweep interval. (With a retention this short
    the master never remembers the job as finished: see FinishedTasks.)"""
    config = config.replace(retention_seconds=1.0)
    client, _ = counted_master(config, tasks)
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    result = config.data_dir / "finished" / f"{task_id}.{result_version(claim['lease'])}"
    result.write_bytes(png)
    client.simulate_post("/registerTaskFinished", params={"id": task_id, "lease": claim["lease"]})
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "1"
    assert "result" not in client.simulate_get("/status", params={"id": task_id}).json
    result.unlink()  # what the storage's sweep does
    for route in ("/isReady", "/status", "/get"):
        answer = client.simulate_get(route, params={"id": task_id})
        assert answer.status_code == 404, route
        assert answer.json["title"] == "Unknown task"


class CountingApp:
    """A WSGI app that records the path of every request before passing it on."""

    def __init__(self, app) -> None:
        self.app, self.paths, self.requests = app, [], []

    def __call__(self, environ, start_response):
        self.paths.append(environ["PATH_INFO"])
        self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return self.app(environ, start_response)


def counted_master(config, tasks) -> tuple[testing.TestClient, CountingApp]:
    database_app = CountingApp(create_database_app(config, tasks))
    database = service_client(database_app, "databaseAddress", "db:1")
    storage = storage_by("api", config)
    app = create_app(config, DatabaseClient(database), storage, check_pipeline)
    return testing.TestClient(app), database_app


def test_an_upload_makes_its_task_before_its_image_and_queues_it_after(config, tasks, png):
    """No image is ever stored without a task tying it to the retention (no orphans)."""
    client, database = counted_master(config, tasks)
    task_id = upload(client, png)
    assert database.paths == ["/newTask", "/enqueueTask"]
    assert tasks.get(task_id).state.value == "queued"
    assert (config.data_dir / "working" / task_id).read_bytes() == png


class NoRoomForTasks:
    """A store whose disk is full: creating a task fails."""

    def create(self, pipeline, **options):
        raise sqlite3.OperationalError("database or disk is full")


def test_an_upload_whose_task_cannot_be_made_stores_nothing(config, png):
    client, _ = counted_master(config, NoRoomForTasks())
    result = client.simulate_post("/new", body=png)
    assert result.status_code == 507
    assert list((config.data_dir / "working").iterdir()) == [], "no image without a task"


def test_a_job_finished_through_this_master_is_answered_without_the_database(config, tasks, png):
    client, database = counted_master(config, tasks)
    task_id = upload(client, png)
    claim = client.simulate_post("/getNewTask").json
    result = f"{task_id}.{result_version(claim['lease'])}"
    (config.data_dir / "finished" / result).write_bytes(png)
    params = {"id": task_id, "lease": claim["lease"]}
    assert client.simulate_post("/registerTaskFinished", params=params).text == "success"
    database.paths.clear()
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "1"
    assert client.simulate_get("/get", params={"id": task_id}).content == png
    assert database.paths == []
    assert client.simulate_get("/status", params={"id": task_id}).json["stateName"] == "finished"
    assert database.paths == ["/getById"], "the full record still comes from the database"


def test_a_job_seen_finished_once_is_not_asked_about_again(config, tasks, png):
    client, database = counted_master(config, tasks)
    task_id = upload(client, png)
    claim = tasks.claim()
    tasks.finish(task_id, claim.lease_token)  # finished by another master
    result = f"{task_id}.{result_version(claim.lease_token)}"
    (config.data_dir / "finished" / result).write_bytes(png)
    database.paths.clear()
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "1"
    assert client.simulate_get("/get", params={"id": task_id}).content == png
    assert database.paths == ["/getById"]


def test_a_job_a_worker_finished_at_the_database_moments_ago_needs_no_storage_check(
    config, tasks, png
):
    """Workers finish at the database: the master's first read of the finished task answers
    /isReady without asking the storage whether the result it just stored is there."""
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage_app = CountingApp(create_storage_app(config, FileImageStore(config.data_dir)))
    storage = service_client(storage_app, "storageAddress", "storage:2")
    app = create_app(config, DatabaseClient(database), StorageClient(storage), check_pipeline)
    client = testing.TestClient(app)
    task_id = upload(client, png)
    claim = tasks.claim()
    result = config.data_dir / "finished" / f"{task_id}.{result_version(claim.lease_token)}"
    result.write_bytes(png)
    tasks.finish(task_id, claim.lease_token)  # what a worker's /finishTask does
    storage_app.requests.clear()
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "1"
    assert client.simulate_get("/get", params={"id": task_id}).content == png
    assert storage_app.requests == [("GET", "/getImage")], "no HEAD before the download"


def test_only_a_job_finished_moments_ago_is_trusted_to_have_its_result():
    wall = [100_000.0]
    finished = FinishedTasks(3600, max_age=60, clock=lambda: 0.0, wall_clock=lambda: wall[0])

    def document(state: str, seconds_ago: float) -> dict:
        at = datetime.datetime.fromtimestamp(wall[0] - seconds_ago, datetime.UTC).isoformat()
        return {"id": "t", "stateName": state, "finishedAt": at, "result": "v"}

    assert finished.finished_just_now(document("finished", 5))
    assert not finished.finished_just_now(document("finished", 61))  # ask the storage
    assert not finished.finished_just_now(document("failed", 5))
    assert not finished.finished_just_now({"id": "t", "stateName": "finished"})
    short = FinishedTasks(RETENTION_MARGIN_SECONDS + 10, wall_clock=lambda: wall[0])
    assert not short.finished_just_now(document("finished", 20)), "its retention nearly over"


def test_finished_tasks_are_forgotten_after_their_age_or_beyond_capacity():
    now = [0.0]
    finished = FinishedTasks(86400, max_age=10, capacity=2, clock=lambda: now[0])
    for task_id in "abc":
        finished.just_finished(task_id, f"v-{task_id}")
    assert finished.version("a") == (False, None)
    assert finished.version("b") == (True, "v-b") and finished.version("c") == (True, "v-c")
    now[0] = 11
    assert finished.version("b") == (False, None) and finished.version("c") == (False, None)


def test_a_finished_task_is_never_remembered_near_the_end_of_its_retention():
    """The retention removes the job and its file; nothing here may outlive them."""
    wall = [1_000_000.0]
    finished = FinishedTasks(3600, max_age=60, clock=lambda: 0.0, wall_clock=lambda: wall[0])

    def document(task_id: str, age: float) -> dict:
        at = datetime.datetime.fromtimestamp(wall[0] - age, datetime.UTC).isoformat()
        return {"id": task_id, "stateName": "finished", "finishedAt": at, "result": "v"}

    finished.seen(document("young", 10))
    finished.seen(document("old", 3600 - RETENTION_MARGIN_SECONDS + 1))
    finished.seen({"id": "queued", "stateName": "queued", "finishedAt": None})
    assert finished.version("young") == (True, "v")
    assert finished.version("old") == (False, None)
    assert finished.version("queued") == (False, None)
    assert FinishedTasks(60).version("x") == (False, None)
    short = FinishedTasks(RETENTION_MARGIN_SECONDS)
    short.just_finished("x", "v")
    assert short.version("x") == (False, None), "a retention within the margin remembers nothing"


# -- cancel ---------------------------------------------------------------------------------
def test_a_queued_job_is_cancelled_and_gone(client, png):
    task_id = upload(client, png)
    cancelled = client.simulate_post("/cancel", params={"id": task_id})
    assert cancelled.status_code == 200
    assert cancelled.json["id"] == task_id and cancelled.json["stateName"] == "cancelled"
    assert "result" not in cancelled.json
    again = client.simulate_post("/cancel", params={"id": task_id})
    assert again.status_code == 200 and again.json == cancelled.json
    assert client.simulate_get("/status", params={"id": task_id}).json["stateName"] == "cancelled"
    for route in ("/get", "/isReady"):
        gone = client.simulate_get(route, params={"id": task_id})
        assert gone.status_code == 410, route
        assert gone.json["title"] == "Job cancelled"
    assert client.simulate_post("/getNewTask").status_code == 204, "never handed to a worker"


def test_a_job_in_progress_is_cancelled_and_its_worker_told(client, config, png):
    task_id = upload(client, png)
    lease = client.simulate_post("/getNewTask").json["lease"]
    assert client.simulate_post("/cancel", params={"id": task_id}).status_code == 200
    params = {"id": task_id, "lease": lease}
    for route in ("/heartbeat", "/registerTaskFinished"):
        refused = client.simulate_post(route, params=params)
        assert refused.status_code == 409 and refused.json["title"] == "Task cancelled", route
    # A result stored before the finish was refused is never served.
    (config.data_dir / "finished" / f"{task_id}.{result_version(lease)}").write_bytes(png)
    assert client.simulate_get("/get", params={"id": task_id}).status_code == 410


def test_a_finished_or_failed_job_is_not_cancelled(client, config, png):
    finished = upload(client, png)
    lease = client.simulate_post("/getNewTask").json["lease"]
    (config.data_dir / "finished" / f"{finished}.{result_version(lease)}").write_bytes(png)
    client.simulate_post("/registerTaskFinished", params={"id": finished, "lease": lease})
    failed = upload(client, png)
    lease = client.simulate_post("/getNewTask").json["lease"]
    client.simulate_post("/failTask", params={"id": failed, "lease": lease, "error": "corrupt"})
    for task_id, state in ((finished, "finished"), (failed, "failed")):
        refused = client.simulate_post("/cancel", params={"id": task_id})
        assert refused.status_code == 409
        assert refused.json["title"] == "Job has ended"
        assert f"the job is {state}" in refused.json["description"]
    assert client.simulate_get("/get", params={"id": finished}).status_code == 200


def test_cancel_of_an_unknown_or_invalid_id(client):
    assert client.simulate_post("/cancel", params={"id": "A" * 22}).status_code == 404
    assert client.simulate_post("/cancel", params={"id": "nope"}).status_code == 400
    assert client.simulate_post("/cancel").status_code == 400


# -- idempotent uploads ---------------------------------------------------------------------
def keyed_upload(client, body: bytes, key: str, op: str | None = None):
    params = {"op": op} if op else {}
    return client.simulate_post("/new", body=body, params=params, headers={"Idempotency-Key": key})


def test_an_upload_sent_again_with_its_key_gets_the_same_job(client, tasks, png):
    first = keyed_upload(client, png, "key-1")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = keyed_upload(client, png, "key-1")
    assert again.status_code == 200 and again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert sum(tasks.counts().values()) == 1
    status = client.simulate_get("/status", params={"id": first.text}).json
    assert status["hasIdempotencyKey"] is True
    other = keyed_upload(client, png, "key-2")
    assert other.status_code == 200 and other.text != first.text
    assert (
        client.simulate_get("/status", params={"id": upload(client, png)}).json["hasIdempotencyKey"]
        is False
    )


def test_a_key_sent_with_another_op_or_body_is_422_saying_which(client, tasks, png):
    assert keyed_upload(client, png, "key-1", op="grayscale").status_code == 200
    other_op = keyed_upload(client, png, "key-1", op="swap")
    assert other_op.status_code == 422 and "different op" in other_op.json["description"]
    other_body = keyed_upload(client, png + b"\0", "key-1", op="grayscale")
    assert other_body.status_code == 422 and "different body" in other_body.json["description"]
    assert sum(tasks.counts().values()) == 1
    assert keyed_upload(client, png, "key-1", op="grayscale").status_code == 200


def test_a_key_whose_first_upload_is_still_streaming_is_409_at_once(client, tasks, png):
    tasks.create("swap", idempotency_key="key-1")  # another master is storing its body
    refused = keyed_upload(client, png, "key-1")
    assert refused.status_code == 409 and refused.json["title"] == "Upload in progress"
    assert refused.headers["Retry-After"] == "1"


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "tab\tkey", "caf\u00e9"])
def test_a_malformed_key_is_400_and_creates_no_task(client, tasks, png, key):
    refused = client.simulate_post("/new", body=png, headers={"Idempotency-Key": key})
    assert refused.status_code == 400 and refused.json["title"] == "Invalid Idempotency-Key"
    assert sum(tasks.counts().values()) == 0


def test_a_key_of_255_visible_characters_is_accepted(client, png):
    key = "".join(chr(33 + n % 94) for n in range(255))
    assert keyed_upload(client, png, key).status_code == 200
    assert keyed_upload(client, png, key).headers["Idempotent-Replayed"] == "true"


class StorageDown:
    def on_post(self, req, resp) -> None:
        raise falcon.HTTPServiceUnavailable(title="Down", description="restarting")


def test_an_upload_that_could_not_be_stored_fails_at_once_and_frees_its_key(config, tasks, png):
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    down = falcon.App()
    down.add_route("/sendImage", StorageDown())
    storage = StorageClient(service_client(down, "storageAddress", "storage:2"))
    broken = testing.TestClient(
        create_app(config, DatabaseClient(database), storage, check_pipeline)
    )
    refused = keyed_upload(broken, png, "key-1")
    assert refused.status_code == 503
    (abandoned,) = tasks.recent(1)
    assert abandoned.state.value == "failed" and "upload failed" in abandoned.error
    working, _ = counted_master(config, tasks)
    retried = keyed_upload(working, png, "key-1")
    assert retried.status_code == 200 and retried.text != abandoned.id
    assert "Idempotent-Replayed" not in retried.headers


def test_the_openapi_task_schema_requires_every_field_status_always_answers(client, png):
    """notes, hasIdempotencyKey and stage are always there but were not listed as required."""
    from darkroom.master.openapi import document

    schema = document()["components"]["schemas"]["Task"]
    task_id = client.simulate_post("/new", body=png).text
    answer = client.simulate_get("/status", params={"id": task_id}).json
    assert set(schema["required"]) == set(answer), "webhook only with a webhook"
    assert set(schema["properties"]) == set(answer) | {"webhook"}


# -- polls answered from memory (the feed of ended tasks) --------------------------------
class CountingReads:
    """The database's store, counting the reads of one task (``get`` and ``watch``)."""

    def __init__(self, store) -> None:
        self._store = store
        self.reads = 0

    def get(self, task_id):
        self.reads += 1
        return self._store.get(task_id)

    def watch(self, task_id, while_in, wait_seconds):
        self.reads += 1
        return self._store.watch(task_id, while_in, wait_seconds)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def following(config, tasks):
    """A master following the database's feed, and the database's counted store."""
    counted = CountingReads(tasks)
    database = DatabaseClient(
        service_client(create_database_app(config, counted), "databaseAddress", "db:1")
    )
    storage = storage_by("api", config)
    finished = FinishedTasks(config.retention_seconds)
    stop = threading.Event()
    unfinished = UnfinishedTasks(database, finished, stop, wait_seconds=1)
    unfinished.start()
    wait_until(lambda: unfinished.following, 10, "the master following the feed")
    app = create_app(
        config,
        database,
        storage,
        check_pipeline,
        finished=finished,
        unfinished=unfinished,
    )
    yield testing.TestClient(app), counted
    stop.set()


def finish_with_result(config, tasks, task_id: str, png: bytes) -> None:
    claim = tasks.claim()
    assert claim.id == task_id
    result = config.data_dir / "finished" / f"{task_id}.{result_version(claim.lease_token)}"
    result.write_bytes(png)
    tasks.finish(task_id, claim.lease_token)


def test_the_polls_of_a_running_job_read_nothing_and_its_end_is_told(following, config, tasks, png):
    client, counted = following
    task_id = upload(client, png)
    for _ in range(5):
        assert client.simulate_get("/isReady", params={"id": task_id}).text == "0"
    assert counted.reads == 0, "the upload told the master the job is queued"
    finish_with_result(config, tasks, task_id, png)
    wait_until(
        lambda: client.simulate_get("/isReady", params={"id": task_id}).text == "1",
        10,
        "the feed telling the finish",
    )
    assert client.simulate_get("/get", params={"id": task_id}).content == png
    assert counted.reads == 0, "the feed told the finish with its result's version"


def test_a_long_poll_of_a_running_job_waits_on_the_feed(following, config, tasks, png):
    client, counted = following
    task_id = upload(client, png)
    threading.Timer(0.2, finish_with_result, [config, tasks, task_id, png]).start()
    began = time.monotonic()
    answer = client.simulate_get("/isReady", params={"id": task_id, "wait": 10})
    assert answer.text == "1" and time.monotonic() - began < 5
    assert counted.reads == 0


def test_a_job_the_master_did_not_upload_is_read_once_then_followed(following, tasks, png):
    client, counted = following
    task = tasks.create("swap")
    tasks.enqueue(task.id)
    for _ in range(3):
        assert client.simulate_get("/isReady", params={"id": task.id}).text == "0"
    assert counted.reads == 1


@pytest.mark.parametrize(("ending", "status"), [("fail", 422), ("cancel", 410)])
def test_a_job_that_failed_or_was_cancelled_is_read_for_its_answer(
    following, tasks, png, ending, status
):
    client, counted = following
    task_id = upload(client, png)
    assert client.simulate_get("/isReady", params={"id": task_id}).text == "0"
    if ending == "fail":
        tasks.fail(task_id, tasks.claim().lease_token, "bad image", retryable=False)
    else:
        tasks.cancel(task_id)

    def answered() -> bool:
        return client.simulate_get("/isReady", params={"id": task_id}).status_code == status

    wait_until(answered, 10, f"/isReady answering {status}")
    assert counted.reads >= 1
