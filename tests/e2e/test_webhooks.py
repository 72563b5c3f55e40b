"""Signed webhooks over the real services: the request a receiver gets, retries, restarts, and
the SSRF guard's default refusal."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator

import pytest
import requests
import standardwebhooks

from darkroom.contract.roles import ROLES
from support.images import png_bytes
from support.jobs import status
from support.processes import Services, wait_until
from support.receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"an end-to-end test secret").decode()
# The receiver is on 127.0.0.1: the test configuration allows loopback, as the README says.
ALLOW_LOOPBACK = {"webhook_allow": "127.0.0.0/8"}


@pytest.fixture
def services(tmp_path) -> Iterator[Services]:
    running = Services(
        tmp_path / "data",
        tmp_path,
        lease_seconds="3",
        concurrency="1",
        webhook_secret=SECRET,
        webhook_allow_http="1",
        webhook_backoff_seconds="0.2",
    )
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()


def start_all(services: Services, **master_settings: str) -> None:
    for role in ROLES:
        services.start(role, **(master_settings if role == "master" else {}))


def upload(services: Services, webhook: str) -> str:
    response = requests.post(
        services.url("master", "/new"),
        data=png_bytes((16, 12)),
        params={"webhook": webhook, "op": "grayscale"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.text


def delivery_settles(services: Services, task_id: str, timeout: float = 30) -> dict:
    def settled() -> dict | None:
        webhook = status(services, task_id)["webhook"]
        return webhook if webhook["state"] != "pending" else None

    return wait_until(settled, timeout, f"the webhook of {task_id} delivered or given up")


def test_the_receiver_gets_exactly_the_documented_request(services, receiver):
    start_all(services, **ALLOW_LOOPBACK)
    task_id = upload(services, receiver.url("/hooks/darkroom?token=t0ken"))
    (request,) = receiver.wait_for(1)
    sent_at = time.time()
    assert request.method == "POST" and request.path == "/hooks/darkroom?token=t0ken"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["webhook-id"] == f"msg_{task_id}"
    assert abs(int(request.headers["webhook-timestamp"]) - sent_at) < 30
    assert request.headers["webhook-signature"].startswith("v1,")
    # what a receiver does with Standard Webhooks' own library
    document = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert document == json.loads(request.body)
    webhook = delivery_settles(services, task_id)
    shown = status(services, task_id)
    assert document == {key: value for key, value in shown.items() if key != "webhook"}
    assert document["stateName"] == "finished" and document["pipeline"] == "grayscale"
    assert webhook["state"] == "delivered" and webhook["attempts"] == 1
    assert webhook["url"] == f"http://127.0.0.1:{receiver.port}/hooks/darkroom?redacted"
    assert [a["status"] for a in webhook["last"]] == [200]
    assert "t0ken" not in json.dumps(shown) and SECRET not in json.dumps(shown)


def test_a_receiver_that_answers_500_twice_gets_it_on_the_third_try(services, receiver):
    receiver.statuses = [500, 500, 200]
    start_all(services, **ALLOW_LOOPBACK)
    task_id = upload(services, receiver.url())
    webhook = delivery_settles(services, task_id)
    assert webhook["state"] == "delivered" and webhook["attempts"] == 3
    assert [a["status"] for a in webhook["last"]] == [500, 500, 200]
    received = receiver.received
    assert len(received) == 3
    assert {r.headers["webhook-id"] for r in received} == {f"msg_{task_id}"}
    assert len({r.body for r in received}) == 1, "the same message each time"
    for request in received:
        standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    # the master's own figures (counted just after it reported the attempt): two refused, one
    # delivered, and the delivery ended delivered
    counted = (
        'darkroom_webhook_attempts_total{result="refused"} 2.0',
        'darkroom_webhook_attempts_total{result="delivered"} 1.0',
        'darkroom_webhook_deliveries_ended_total{outcome="delivered"} 1.0',
    )

    def all_counted() -> bool:
        scraped = requests.get(services.url("master", "/metrics"), timeout=10).text
        return all(line in scraped for line in counted)

    wait_until(all_counted, 10, "the master's webhook figures")


def test_restarts_of_the_master_and_the_database_between_attempts_lose_nothing(services, receiver):
    receiver.statuses = [500]
    start_all(services, **ALLOW_LOOPBACK)
    task_id = upload(services, receiver.url())
    receiver.wait_for(1)
    services.stop("master")
    services.stop("database", signal.SIGKILL)
    tried = len(receiver.received)
    receiver.statuses = [200]  # from now on, only the restarted roles can deliver it
    services.start("database")
    services.start("master", **ALLOW_LOOPBACK)
    webhook = delivery_settles(services, task_id)
    assert webhook["state"] == "delivered"
    assert webhook["attempts"] == len(receiver.received) > tried
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{task_id}"}
    standardwebhooks.Webhook(SECRET).verify(
        receiver.received[-1].body, receiver.received[-1].headers
    )


def test_a_url_resolving_to_a_private_address_is_refused_by_default(services, receiver):
    start_all(services)  # no DARKROOM_WEBHOOK_ALLOW: the default policy
    for url, named in [
        (f"http://localhost:{receiver.port}/hook", "127.0.0.1, a loopback address"),
        ("http://[::ffff:10.0.0.1]/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ]:
        response = requests.post(
            services.url("master", "/new"),
            data=png_bytes((4, 4)),
            params={"webhook": url},
            timeout=10,
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert named in response.json()["description"]
    listed = requests.get(services.url("database", "/list"), timeout=5, headers=auth(services))
    assert listed.text == "", "no job was made"
    assert receiver.received == []


def auth(services: Services) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"}
