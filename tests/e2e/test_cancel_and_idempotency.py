"""Cancel and idempotent uploads over the real services: a cancelled job never turns finished,
even when its worker was mid-processing; one Idempotency-Key gives one job, on any master."""

from __future__ import annotations

import uuid

import pytest
import requests

from harness.environment import serve_command
from harness.launch import Launched
from support.images import noise_png, png_bytes
from support.processes import START_TIMEOUT, Services, free_port, wait_until

pytestmark = pytest.mark.e2e

# A few seconds of processing for one task loop: several heavy steps on a photo-sized image
# that does not compress (about 2 s on an idle core).
SLOW_OP = "blur:50,rotate:33,blur:50,sharpen,blur:50"


def post_new(master: str, body: bytes, key: str | None = None, **params: str):
    headers = {} if key is None else {"Idempotency-Key": key}
    return requests.post(f"{master}/new", data=body, params=params, headers=headers, timeout=30)


def uploaded(services: Services, body: bytes, **params: str) -> str:
    response = post_new(services.url("master"), body, **params)
    assert response.status_code == 200, response.text
    return response.text


def state_of(services: Services, task_id: str) -> str:
    answer = requests.get(services.url("master", "/status"), params={"id": task_id}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["stateName"]


def wait_state(services: Services, task_id: str, state: str, timeout: float = 60) -> None:
    wait_until(lambda: state_of(services, task_id) == state, timeout, f"{task_id} {state}")


def cancel(services: Services, task_id: str) -> requests.Response:
    return requests.post(services.url("master", "/cancel"), params={"id": task_id}, timeout=10)


def results_of(services: Services, task_id: str) -> list:
    return list((services.data_dir / "finished").glob(f"{task_id}*"))


@pytest.fixture
def running(services: Services) -> Services:
    """Every role, with one task loop (a thread: its log lines are in worker.log)."""
    for role in ("registry", "database", "storage", "master", "frontend"):
        services.start(role)
    services.start("worker", concurrency="1", worker_mode="thread")
    return services


def test_a_job_cancelled_mid_processing_never_finishes_and_the_next_one_does(running):
    services = running
    slow = uploaded(services, noise_png((2400, 2400), seed=7), op=SLOW_OP)
    queued_behind = uploaded(services, png_bytes((16, 16)))
    wait_state(services, slow, "in progress", timeout=30)
    cancelled = cancel(services, slow)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["stateName"] == "cancelled"
    # The worker learns it at a heartbeat (every second with a 3 s lease), or at its finish.
    services.processes["worker"].wait_for_log("task cancelled by its client; stopped", 60)
    wait_state(services, queued_behind, "finished")  # the loop goes on with the next job
    assert state_of(services, slow) == "cancelled", "never finished"
    assert results_of(services, slow) == [], "no result stored (or it was removed)"
    for route in ("/get", "/isReady"):
        gone = requests.get(services.url("master", route), params={"id": slow}, timeout=10)
        assert gone.status_code == 410 and gone.json()["title"] == "Job cancelled"
    again = cancel(services, slow)
    assert again.status_code == 200 and again.json() == cancelled.json()


def test_cancel_of_a_queued_job_and_of_a_finished_one(running):
    services = running
    # The one task loop is busy with this; the next job waits in the queue.
    busy = uploaded(services, noise_png((2400, 2400), seed=8), op=SLOW_OP)
    wait_state(services, busy, "in progress", timeout=30)
    waiting = uploaded(services, png_bytes((16, 16)))
    assert cancel(services, waiting).json()["stateName"] == "cancelled"
    wait_state(services, busy, "finished")
    assert state_of(services, waiting) == "cancelled", "never handed to the worker"
    refused = cancel(services, busy)
    assert refused.status_code == 409 and "finished" in refused.json()["description"]
    # through the frontend too
    other = requests.post(services.url("frontend", "/cancel"), params={"id": busy}, timeout=10)
    assert other.status_code == 409


def start_second_master(services: Services) -> tuple[Launched, str]:
    port = free_port()
    master = Launched(
        "master-2", serve_command("master", port), services.env, services.log_dir / "master-2.log"
    )
    address = f"http://127.0.0.1:{port}"
    master.wait_for_url(f"{address}/readyz", START_TIMEOUT, interval=0.02)
    return master, address


def test_two_uploads_with_one_key_give_one_job_on_either_master(running):
    services = running
    second, other_master = start_second_master(services)
    try:
        image = png_bytes((24, 24), seed=5)
        key = str(uuid.uuid4())
        first = post_new(services.url("master"), image, key)
        assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
        for master in (services.url("master"), other_master):
            again = post_new(master, image, key)
            assert again.status_code == 200 and again.text == first.text, master
            assert again.headers["Idempotent-Replayed"] == "true"
        different_body = post_new(other_master, png_bytes((24, 24), seed=6), key)
        assert different_body.status_code == 422
        assert "different body" in different_body.json()["description"]
        different_op = post_new(services.url("master"), image, key, op="grayscale")
        assert different_op.status_code == 422
        assert "different op" in different_op.json()["description"]
        wait_state(services, first.text, "finished")
        listed = requests.get(
            services.url("database", "/list"),
            headers={"Authorization": f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"},
            timeout=10,
        )
        assert listed.text.count("\n") == 1, "one job for the five uploads"
    finally:
        second.stop(30)


def test_an_idempotent_upload_survives_a_database_restart(running):
    services = running
    image = png_bytes((20, 20), seed=9)
    key = str(uuid.uuid4())
    first = post_new(services.url("master"), image, key)
    assert first.status_code == 200
    services.stop("database")
    services.start("database")
    # a Response is true when its status is below 400
    again = wait_until(
        lambda: post_new(services.url("master"), image, key), 30, "the restarted database"
    )
    assert again.status_code == 200
    assert again.text == first.text and again.headers["Idempotent-Replayed"] == "true"
