"""Webhooks through the master: the URL checked at upload, deliveries signed, retried, shown."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import random
import threading
import time

import pytest
import standardwebhooks
from falcon import testing
from prometheus_client import CollectorRegistry

from darkroom.contract.folders import result_version
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.service import open_store
from darkroom.master.app import create_app
from darkroom.master.webhooks import (
    MAX_BACKOFF_SECONDS,
    Deliveries,
    WebhookGuard,
    WebhookMetrics,
    WebhookSender,
    WebhookSettings,
    retry_delay,
)
from support.inprocess import service_client, storage_by
from support.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"a test secret of 24 bytes").decode()


class Names:
    """A resolver whose answers a test changes: the receiver's name, an internal one."""

    def __init__(self) -> None:
        self.table = {
            "hooks.example": ["127.0.0.1"],
            "internal.example": ["10.0.0.5"],
            "mixed.example": ["93.184.215.14", "192.168.0.9"],
        }

    def __call__(self, host: str, port: int) -> list[str]:
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]  # an address resolves to itself
        if host not in self.table:
            raise OSError("Name or service not known")
        return self.table[host]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(config):
    return config.replace(
        webhook_secret=SECRET,
        webhook_allow="127.0.0.0/8",
        webhook_allow_http=True,
        webhook_backoff_seconds=0.01,
        webhook_retry_seconds=60,
    )


@pytest.fixture
def names() -> Names:
    return Names()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def tasks(config):
    return open_store(config)


@pytest.fixture
def database(config, tasks) -> DatabaseClient:
    return DatabaseClient(
        service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    )


@pytest.fixture
def guard(config, names) -> WebhookGuard:
    return WebhookGuard(config.settings_for(WebhookSettings), resolver=names)


@pytest.fixture
def client(config, database, guard) -> testing.TestClient:
    storage = storage_by("api", config)
    app = create_app(config, database, storage, lambda text: text or "swap", webhooks=guard)
    return testing.TestClient(app)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    """Where the delivery loops count their attempts."""
    return CollectorRegistry()


@pytest.fixture
def deliveries(config, database, guard, clock, registry) -> Deliveries:
    sender = WebhookSender(guard, timeout=5, clock=clock)
    settings = config.settings_for(WebhookSettings)
    metrics = WebhookMetrics(registry)
    return Deliveries(
        database, sender, settings, threading.Event(), random.Random(1), clock, metrics
    )


ATTEMPT_RESULTS = ("delivered", "refused", "failed")
ENDED_OUTCOMES = ("delivered", "gone", "given_up")


def counted(registry: CollectorRegistry) -> dict[str, dict[str, float] | float]:
    """The delivery counters by label, and how many attempts were timed."""
    sample = registry.get_sample_value
    return {
        "attempts": {
            result: sample("darkroom_webhook_attempts_total", {"result": result})
            for result in ATTEMPT_RESULTS
        },
        "ended": {
            outcome: sample("darkroom_webhook_deliveries_ended_total", {"outcome": outcome})
            for outcome in ENDED_OUTCOMES
        },
        "timed": sample("darkroom_webhook_attempt_duration_seconds_count"),
    }


def counts(
    attempts: dict[str, float], ended: dict[str, float] | None = None
) -> dict[str, dict[str, float] | float]:
    """What ``counted`` should give: these counts, every other label at 0, each attempt timed."""
    return {
        "attempts": {result: attempts.get(result, 0.0) for result in ATTEMPT_RESULTS},
        "ended": {outcome: (ended or {}).get(outcome, 0.0) for outcome in ENDED_OUTCOMES},
        "timed": float(sum(attempts.values())),
    }


def upload(client, png, url: str) -> str:
    result = client.simulate_post("/new", body=png, params={"webhook": url})
    assert result.status_code == 200, result.text
    return result.text


def finish(client, config, tasks, task_id: str, png: bytes) -> None:
    claim = tasks.claim()
    assert claim.id == task_id
    (config.data_dir / "finished" / f"{task_id}.{result_version(claim.lease_token)}").write_bytes(
        png
    )
    tasks.finish(task_id, claim.lease_token)


def status(client, task_id: str) -> dict:
    result = client.simulate_get("/status", params={"id": task_id})
    assert result.status_code == 200, result.text
    return result.json


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("ftp://hooks.example/", 400, "must start with https:// or http://"),
        ("http://user:pw@hooks.example/", 400, "credentials"),
        ("https://internal.example/hook", 422, "internal.example resolves to 10.0.0.5, a private"),
        ("https://mixed.example/hook", 422, "192.168.0.9, a private"),
        ("https://nowhere.example/hook", 422, "does not resolve"),
        ("http://169.254.169.254/latest/meta-data", 422, "link-local"),
    ],
)
def test_a_bad_or_refused_webhook_is_refused_at_upload(client, tasks, png, url, code, message):
    result = client.simulate_post("/new", body=png, params={"webhook": url})
    assert result.status_code == code
    assert message in result.json["description"], result.json
    assert tasks.recent(10) == [], "no job made"


def test_a_webhook_without_a_secret_is_refused_saying_so(config, database, png):
    storage = storage_by("api", config)
    app = create_app(config.replace(webhook_secret=""), database, storage, lambda t: t or "swap")
    result = testing.TestClient(app).simulate_post(
        "/new", body=png, params={"webhook": "https://hooks.example/"}
    )
    assert result.status_code == 400
    assert "DARKROOM_WEBHOOK_SECRET" in result.json["description"]


def test_a_webhook_given_twice_is_refused(client, png):
    result = client.simulate_post(
        "/new", body=png, query_string="webhook=https://a.example/&webhook=https://b.example/"
    )
    assert result.status_code == 400


def test_status_shows_the_pending_delivery_with_its_query_redacted(client, png):
    task_id = upload(client, png, "https://hooks.example/in?token=s3cret")
    webhook = status(client, task_id)["webhook"]
    assert webhook == {
        "url": "https://hooks.example/in?redacted",
        "state": "pending",
        "attempts": 0,
        "nextAttemptAt": None,
        "last": [],
    }
    assert "s3cret" not in json.dumps(status(client, task_id))
    assert "webhook" not in status(client, upload_plain(client, png))


def upload_plain(client, png) -> str:
    return client.simulate_post("/new", body=png).text


def test_the_ended_job_is_posted_signed_and_shown_delivered(
    client, config, tasks, deliveries, receiver, png
):
    task_id = upload(client, png, receiver.url("/in?token=abc"))
    assert not deliveries.deliver_one(), "nothing is due before the job ends"
    finish(client, config, tasks, task_id, png)
    assert deliveries.deliver_one()
    (request,) = receiver.received
    assert request.path == "/in?token=abc"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == f"msg_{task_id}"
    document = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    shown = status(client, task_id)
    assert document == {key: value for key, value in shown.items() if key != "webhook"}
    assert document["stateName"] == "finished"
    assert shown["webhook"]["state"] == "delivered" and shown["webhook"]["attempts"] == 1
    assert shown["webhook"]["last"][0]["status"] == 200
    assert not deliveries.deliver_one(), "delivered once"


def test_a_failed_job_is_posted_too(client, tasks, deliveries, receiver, png):
    task_id = upload(client, png, receiver.url())
    claim = tasks.claim()
    tasks.fail(task_id, claim.lease_token, "cannot decode image", retryable=False)
    assert deliveries.deliver_one()
    body = json.loads(receiver.received[0].body)
    assert body["stateName"] == "failed" and body["error"] == "cannot decode image"


def test_errors_are_retried_with_the_same_message_id_until_delivered(
    client, config, tasks, deliveries, receiver, clock, png, registry
):
    receiver.statuses = [500, 503, 200]
    task_id = upload(client, png, receiver.url())
    finish(client, config, tasks, task_id, png)
    for _ in range(3):
        # the retry is due within the backoff (0.01 s, then 0.02 s at most)
        deadline = time.monotonic() + 5
        while not deliveries.deliver_one():
            assert time.monotonic() < deadline, "the retry came due"
    ids = {request.headers["webhook-id"] for request in receiver.received}
    assert ids == {f"msg_{task_id}"} and len(receiver.received) == 3
    webhook = status(client, task_id)["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("delivered", 3)
    assert [a["status"] for a in webhook["last"]] == [500, 503, 200]
    assert counted(registry) == counts({"refused": 2, "delivered": 1}, {"delivered": 1})


def test_gone_gives_up_at_once(client, config, tasks, deliveries, receiver, png, registry):
    receiver.statuses = [410]
    task_id = upload(client, png, receiver.url())
    finish(client, config, tasks, task_id, png)
    assert deliveries.deliver_one()
    webhook = status(client, task_id)["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 1)
    time.sleep(0.05)  # past any backoff: nothing more is due
    assert not deliveries.deliver_one()
    assert counted(registry) == counts({"refused": 1}, {"gone": 1})


def test_retries_stop_when_the_retry_period_is_over(
    client, config, tasks, deliveries, receiver, clock, png, registry
):
    receiver.statuses = [500]
    task_id = upload(client, png, receiver.url())
    finish(client, config, tasks, task_id, png)
    clock.now += 61  # webhook_retry_seconds is 60
    assert deliveries.deliver_one()
    assert status(client, task_id)["webhook"]["state"] == "failed"
    assert counted(registry) == counts({"refused": 1}, {"given_up": 1})


def test_the_address_is_checked_again_at_every_attempt(
    client, config, tasks, deliveries, receiver, names, png
):
    task_id = upload(client, png, f"http://hooks.example:{receiver.port}/in")
    names.table["hooks.example"] = ["10.1.2.3"]  # rebound after the upload's check
    finish(client, config, tasks, task_id, png)
    assert deliveries.deliver_one()
    assert receiver.received == []
    webhook = status(client, task_id)["webhook"]
    assert webhook["state"] == "pending", "retried: the name may resolve right again"
    assert "10.1.2.3, a private address" in webhook["last"][0]["error"]


def test_an_unreachable_receiver_is_an_error_retried(
    client, config, tasks, deliveries, png, registry
):
    from harness.launch import free_port

    task_id = upload(client, png, f"http://127.0.0.1:{free_port()}/in")
    finish(client, config, tasks, task_id, png)
    assert deliveries.deliver_one()
    webhook = status(client, task_id)["webhook"]
    assert webhook["state"] == "pending" and "connection" in webhook["last"][0]["error"]
    assert counted(registry) == counts({"failed": 1})


def test_the_retry_delay_is_exponential_with_full_jitter():
    rng = random.Random(7)
    for attempts in (1, 2, 3, 10):
        delays = [retry_delay(attempts, 5.0, rng) for _ in range(200)]
        ceiling = min(5.0 * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2, "spread below it"
    assert retry_delay(10_000, 5.0, rng) <= MAX_BACKOFF_SECONDS


def test_the_loops_deliver_in_the_background_and_stop(
    client, config, tasks, database, guard, receiver, png
):
    settings = config.settings_for(WebhookSettings)
    stop = threading.Event()
    loops = Deliveries(database, WebhookSender(guard, timeout=5), settings, stop)
    loops.start()
    try:
        task_id = upload(client, png, receiver.url())
        finish(client, config, tasks, task_id, png)
        receiver.wait_for(1, timeout=10)
    finally:
        loops.close(timeout=5)
    assert stop.is_set()
    assert all(not thread.is_alive() for thread in loops._threads)


def test_the_masters_metrics_show_the_delivery_figures(config, database, registry):
    WebhookMetrics(registry)
    storage = storage_by("api", config)
    app = create_app(config, database, storage, lambda text: text or "swap", registry=registry)
    scraped = testing.TestClient(app).simulate_get("/metrics").text
    assert 'darkroom_webhook_attempts_total{result="failed"} 0.0' in scraped
    assert 'darkroom_webhook_deliveries_ended_total{outcome="given_up"} 0.0' in scraped
