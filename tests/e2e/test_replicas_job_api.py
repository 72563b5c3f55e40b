"""Issue 16's job API on the replicated system (``harness.replicated``): two halves on one
PostgreSQL, each with its own master, database and worker. What one half does, the other
sees through PostgreSQL alone: a cancel reaches the other half's worker, an idempotency key
holds across both, two masters deliver a webhook once, and one half's event stream shows the
stages the other half's worker sent."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
import standardwebhooks

from harness.replicated import HALVES, ROLES, ReplicatedDarkroom
from support.images import noise_png, png_bytes
from support.processes import wait_until
from support.receiver import Receiver
from support.sse import events_in

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"the replicated test secret").decode()
# Several heavy steps on a photo-sized image that does not compress: seconds of processing.
SLOW_OP = "blur:50,rotate:33,blur:50,sharpen,blur:50"
PIPELINE = "grayscale,resize:8x8,flip"
STAGES = ["download", "decode", "grayscale", "resize:8x8", "flip", "encode", "store"]


@pytest.fixture
def system(tmp_path, postgres_url) -> Iterator[Callable[..., ReplicatedDarkroom]]:
    """Starts the two halves (with every worker unless ``workers`` names fewer halves)."""
    started: list[ReplicatedDarkroom] = []

    def start(workers: tuple[str, ...] = HALVES) -> ReplicatedDarkroom:
        replicated = ReplicatedDarkroom(
            postgres_url,
            tmp_path / "data",
            tmp_path,
            lease_seconds="3",
            concurrency="1",
            worker_mode="thread",  # its log lines in worker-<half>.log
            webhook_secret=SECRET,
            webhook_allow_http="1",
            webhook_allow="127.0.0.0/8",  # the receiver, on loopback
            webhook_backoff_seconds="0.2",
        )
        started.append(replicated)
        for role in ROLES:
            for half in HALVES:
                if role != "worker" or half in workers:
                    replicated.start(half, role)
        return replicated

    try:
        yield start
    finally:
        for replicated in started:
            replicated.stop_all()


def post_new(
    replicated: ReplicatedDarkroom, half: str, body: bytes, key: str | None = None, **params: str
) -> requests.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    url = replicated.url("master", "/new", half)
    return requests.post(url, data=body, params=params, headers=headers, timeout=30)


def uploaded(replicated: ReplicatedDarkroom, half: str, body: bytes, **params: str) -> str:
    response = post_new(replicated, half, body, **params)
    assert response.status_code == 200, response.text
    return response.text


def status(replicated: ReplicatedDarkroom, half: str, task_id: str) -> dict:
    url = replicated.url("master", "/status", half)
    answer = requests.get(url, params={"id": task_id}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_state(replicated: ReplicatedDarkroom, half: str, task_id: str, state: str) -> None:
    wait_until(
        lambda: status(replicated, half, task_id)["stateName"] == state, 60, f"{task_id} {state}"
    )


def listed_ids(replicated: ReplicatedDarkroom, half: str) -> set[str]:
    answer = requests.get(
        replicated.url("database", "/list", half),
        params={"limit": 100},
        headers={**replicated.auth, "Accept": "application/json"},
        timeout=10,
    )
    return {task["id"] for task in answer.json()}


def test_a_job_cancelled_on_one_half_is_stopped_by_the_other_halfs_worker(system):
    replicated = system(workers=("b",))  # only B's worker: it holds every job
    slow = uploaded(replicated, "a", noise_png((2400, 2400), seed=3), op=SLOW_OP)
    behind = uploaded(replicated, "a", png_bytes((16, 16)))
    wait_state(replicated, "a", slow, "in progress")
    cancelled = requests.post(replicated.url("master", "/cancel"), params={"id": slow}, timeout=10)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["stateName"] == "cancelled"
    replicated.processes["b", "worker"].wait_for_log("task cancelled by its client; stopped", 60)
    wait_state(replicated, "b", behind, "finished")  # B's loop went on with the next job
    for half in HALVES:
        assert status(replicated, half, slow)["stateName"] == "cancelled", "never finished"
        gone = requests.get(replicated.url("master", "/get", half), params={"id": slow}, timeout=10)
        assert gone.status_code == 410, gone.text
    assert list((replicated.data_dir / "finished").glob(f"{slow}*")) == [], "no result kept"


def test_one_idempotency_key_used_on_both_halves_gives_one_job(system):
    replicated = system()
    image, key = png_bytes((24, 24), seed=5), str(uuid.uuid4())
    start = threading.Barrier(2)

    def send(half: str) -> requests.Response:
        start.wait(10)
        return post_new(replicated, half, image, key)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        at_once = list(pool.map(send, HALVES, timeout=60))
    # the loser of the race finds the key taken: the same job, or 409 while it is uploading
    assert sorted(r.status_code for r in at_once) in ([200, 200], [200, 409]), at_once
    task_id = next(r.text for r in at_once if r.status_code == 200)
    for half in HALVES:
        again = post_new(replicated, half, image, key)
        assert again.status_code == 200 and again.text == task_id, half
        assert again.headers["Idempotent-Replayed"] == "true"
    assert post_new(replicated, "b", png_bytes((24, 24), seed=6), key).status_code == 422
    wait_state(replicated, "b", task_id, "finished")
    assert listed_ids(replicated, "a") == listed_ids(replicated, "b") == {task_id}


def test_two_masters_deliver_each_webhook_message_once(system):
    receiver = Receiver()
    try:
        replicated = system()
        task_ids = {
            uploaded(replicated, half, png_bytes((8, 8), seed=n), webhook=receiver.url())
            for n in range(6)
            for half in HALVES
        }
        for task_id in task_ids:
            wait_until(
                lambda t=task_id: status(replicated, "a", t)["webhook"]["state"] == "delivered",
                60,
                f"the webhook of {task_id} delivered",
            )
        received = receiver.received
        ids = [request.headers["webhook-id"] for request in received]
        assert sorted(ids) == sorted(f"msg_{task_id}" for task_id in task_ids), "once each"
        for request in received:
            standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
        for task_id in task_ids:
            assert status(replicated, "b", task_id)["webhook"]["attempts"] == 1
    finally:
        receiver.close()


def test_one_halfs_event_stream_shows_the_stages_the_other_halfs_worker_sent(system):
    replicated = system(workers=())
    task_id = uploaded(replicated, "a", png_bytes((32, 24), "RGB"), op=PIPELINE)
    url = replicated.url("master", "/events", "a")
    with requests.get(url, params={"id": task_id}, stream=True, timeout=30) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        replicated.start("b", "worker")  # the stream is open before the job is claimed
        text = "".join(chunk.decode() for chunk in stream.iter_content(None))  # until it closes
    events = events_in(text)
    described = [(e["event"], e["data"].get("state") or e["data"]["stage"]) for e in events]
    assert described == [
        ("state", "uploading"),
        ("state", "queued"),
        ("state", "in progress"),
        *(("stage", stage) for stage in STAGES),
        ("state", "finished"),
    ]
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
