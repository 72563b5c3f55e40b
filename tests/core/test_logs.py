from __future__ import annotations

import datetime
import io
import json
import logging
import threading

import falcon
import pytest
from falcon import testing

from darkroom.core import logs, requestid
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.database.app import create_app as create_database_app
from darkroom.database.service import open_store
from darkroom.registry.app import create_app as create_registry_app
from darkroom.registry.store import FileKeyValueStore
from darkroom.worker.loop import TaskLoop
from support.images import png_bytes
from support.inprocess import master_side

TOKEN = "very-secret-service-token"


@pytest.fixture
def lines():
    """JSON logging configured as a service does it, into a buffer; the lines it holds."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    switches = logging._srcfile, logging.logThreads, logging.logProcesses
    buffer = io.StringIO()
    logs.configure("DEBUG", stream=buffer, role="test")

    def parsed() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield parsed
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    logging._srcfile, logging.logThreads, logging.logProcesses = switches


def test_a_line_is_json_with_request_id_and_extra_fields(lines):
    token = requestid.current.set("req-123")
    try:
        logging.getLogger("darkroom.test").warning(
            "something happened", extra={"task": "abc", "attempt": 2, "size": b"raw"}
        )
    finally:
        requestid.current.reset(token)
    logging.getLogger("darkroom.test").info("outside a request")
    first, second = lines()
    assert first["message"] == "something happened"
    assert first["level"] == "WARNING" and first["logger"] == "darkroom.test"
    assert first["request_id"] == "req-123"
    assert first["task"] == "abc" and first["attempt"] == 2 and first["size"] == "raw"
    assert first["role"] == "test" and first["time"].endswith("+00:00")
    assert "request_id" not in second


def test_exceptions_are_one_line(lines):
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("darkroom.test").exception("failed")
    (line,) = lines()
    assert "ValueError: bad value" in line["exception"]


def test_secrets_are_never_written(lines):
    logging.getLogger("darkroom.test").info(
        "calling",
        extra={
            "authorization": f"Bearer {TOKEN}",
            "headers": {"Authorization": f"Bearer {TOKEN}", "Accept": "text/plain"},
            "lease": "lease-token-xyz",
            "api_key": "k-1",
        },
    )
    (line,) = lines()
    assert line["authorization"] == logs.REDACTED
    assert line["headers"] == {"Authorization": logs.REDACTED, "Accept": "text/plain"}
    assert line["lease"] == logs.REDACTED and line["api_key"] == logs.REDACTED


class Echo:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        logging.getLogger("darkroom.test").info("handling", extra={"answer": 42})
        resp.text = "ok"


def test_requests_are_logged_with_their_id_and_without_credentials(lines, tmp_path):
    app = create_base_app(Config(data_dir=tmp_path, internal_token=TOKEN))
    app.add_route("/echo", Echo())
    client = testing.TestClient(app)
    headers = {"X-Request-ID": "upload-42", "Authorization": f"Bearer {TOKEN}"}
    result = client.simulate_get("/echo", query_string=f"lease={TOKEN}", headers=headers)
    assert result.status_code == 200
    client.simulate_get("/healthz")

    handled, access, health = lines()
    assert handled["message"] == "handling" and handled["answer"] == 42
    assert handled["request_id"] == access["request_id"] == "upload-42"
    assert access["logger"] == "darkroom.access" and access["level"] == "INFO"
    assert access["route"] == "/echo" and access["status"] == 200 and access["ms"] >= 0
    assert health["level"] == "DEBUG" and health["request_id"] != "upload-42"
    assert TOKEN not in json.dumps(lines())
    assert requestid.current.get() == ""  # the id does not outlive its request


def test_unexpected_errors_are_logged_as_json(lines, tmp_path):
    class Broken:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise RuntimeError("boom")

    app = create_base_app(Config(data_dir=tmp_path))
    app.add_route("/broken", Broken())
    result = testing.TestClient(app).simulate_get("/broken", headers={"X-Request-ID": "r-9"})
    assert result.status_code == 500
    error = next(line for line in lines() if line["message"] == "unexpected error")
    assert error["request_id"] == "r-9" and "RuntimeError: boom" in error["exception"]


def test_a_task_can_be_followed_through_every_service_by_its_id(lines, config):
    """The worker works under the task id: its calls carry it to master, database, storage."""
    system = master_side(config)
    upload = testing.TestClient(system.master_app).simulate_post(
        "/new", body=png_bytes(), headers={"X-Request-ID": "client-upload-1"}
    )
    task_id = upload.text

    def copy(source, destination, pipeline, **_):
        destination.write(source.read())
        return "image/png"

    loop = TaskLoop(system.master, system.storage, copy, ValueError, 0, 5, 5, threading.Event())
    claim = system.master.claim(0, 5)
    loop.handle(claim)

    found = lines()
    queued = next(line for line in found if line["message"] == "job queued")
    assert queued["request_id"] == "client-upload-1" and queued["task"] == task_id
    upload_routes = {
        line.get("route") for line in found if line.get("request_id") == "client-upload-1"
    }
    assert {"/new", "/newTask", "/sendImage", "/enqueueTask"} <= upload_routes
    task_lines = [line for line in found if line.get("request_id") == task_id]
    assert {"task claimed", "task finished"} <= {line["message"] for line in task_lines}
    assert {"/getImage", "/sendImage", "/registerTaskFinished", "/finishTask"} <= {
        line.get("route") for line in task_lines
    }


def test_routine_requests_are_debug_events_are_info(lines, config):
    """Idle claims and registry look-ups filled a terminal every claim wait at INFO."""
    registry = testing.TestClient(
        create_registry_app(config, FileKeyValueStore(config.data_dir / "registry.json"))
    )
    registry.simulate_post("/set", params={"key": "masterAddress", "value": "127.0.0.1:1"})
    registry.simulate_get("/get", params={"key": "masterAddress"})
    database = testing.TestClient(create_database_app(config, open_store(config)))
    assert database.simulate_post("/getNewTask", params={"wait": "0"}).status_code == 204
    idle_delivery = database.simulate_post("/claimDelivery", params={"lease_seconds": "30"})
    assert idle_delivery.status_code == 204
    levels = {(line["route"], line["status"]): line["level"] for line in lines()}
    assert levels == {
        ("/set", 200): "INFO",
        ("/get", 200): "DEBUG",
        ("/getNewTask", 204): "DEBUG",
        ("/claimDelivery", 204): "DEBUG",
    }


def test_text_lines_are_readable_with_the_fields_after_the_message():
    buffer = io.StringIO()
    formatter = logs.TextFormatter({"role": "master"})
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    logger = logging.getLogger("darkroom.test.text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("serving", extra={"address": "127.0.0.1:3003", "note": "two words"})
        try:
            raise ValueError("bad value")
        except ValueError:
            logger.exception("failed", extra={"token": "s3cret"})
    finally:
        logger.removeHandler(handler)
    first, second, *trace = buffer.getvalue().splitlines()
    clock, rest = first.split(" ", 1)
    assert len(clock) == 8 and clock.count(":") == 2
    assert rest == 'master WARNING serving address=127.0.0.1:3003 note="two words"'
    assert second.endswith("master ERROR failed token=[redacted]")
    assert trace[0] == "Traceback (most recent call last):" and "ValueError: bad value" in trace[-1]


def test_auto_format_is_text_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", Terminal()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("json", Terminal()) == "json"


def test_the_time_is_utc_to_the_millisecond_as_datetime_writes_it():
    """The formatter makes the seconds' text once per second: a later line, or one of an
    earlier second (another thread's), still gets its own."""
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("darkroom.test", logging.INFO, "", 0, "message", None, None)
    for created in (1_764_600_000.0, 1_764_600_000.9994, 1_764_600_001.0005, 1_764_599_999.25):
        record.created = created
        expected = datetime.datetime.fromtimestamp(created, datetime.UTC)
        assert formatter.document(record)["time"] == expected.isoformat(timespec="milliseconds")
