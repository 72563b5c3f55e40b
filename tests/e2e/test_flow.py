"""Upload → ready → download against the real services, and the failures they must survive."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from harness.metrics import samples, total
from support.images import decode, noise_png, png_bytes, same_pixels, swapped
from support.jobs import download, status, upload, wait_state
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e


def test_upload_ready_download_pixel_by_pixel(services):
    services.start_all()
    images = [png_bytes((31, 17), "RGBA", seed=n) for n in range(1, 4)]
    images.append(png_bytes((20, 10), "RGB"))
    ids = [upload(services, image) for image in images]
    for task_id, image in zip(ids, images, strict=True):
        wait_state(services, task_id, "finished")
        ready = requests.get(services.url("master", "/isReady"), params={"id": task_id}, timeout=5)
        assert ready.text == "1"
        assert same_pixels(decode(download(services, task_id)), swapped(image))


def test_frontend_seed_routes(services):
    services.start_all()
    image = png_bytes((12, 12))
    page = requests.get(services.url("frontend", "/"), timeout=5)
    assert 'name="uploadfile"' in page.text
    submitted = requests.post(
        services.url("frontend", "/submitTask"),
        files={"uploadfile": ("a.png", image, "image/png")},
        timeout=10,
    )
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.text
    wait_state(services, task_id, "finished")
    ready = requests.get(services.url("frontend", "/isReady"), params={"id": task_id}, timeout=5)
    assert ready.text == "Your image is ready."
    result = requests.get(services.url("frontend", "/getImage"), params={"id": task_id}, timeout=5)
    assert same_pixels(decode(result.content), swapped(image))
    assert "attachment" in result.headers["Content-Disposition"]


def test_corrupt_image_fails_with_reason_and_worker_survives(services):
    services.start_all()
    truncated = png_bytes((64, 64))[:-40]
    bad = upload(services, truncated)
    task = wait_state(services, bad, "failed")
    assert task["error"], "a failed task says why"
    result = requests.get(services.url("master", "/get"), params={"id": bad}, timeout=5)
    assert result.status_code == 422 and task["error"] in result.json()["description"]
    good = upload(services, png_bytes())
    wait_state(services, good, "finished")


def test_database_restart_loses_no_task(services):
    for role in ("registry", "database", "storage", "master"):
        services.start(role)
    images = {
        upload(services, png_bytes((9, 9), seed=n)): png_bytes((9, 9), seed=n) for n in range(5)
    }
    services.stop("database", signal.SIGKILL)
    services.start("database")
    services.start("worker")
    for task_id, image in images.items():
        wait_state(services, task_id, "finished")
        assert same_pixels(decode(download(services, task_id)), swapped(image))


def test_master_is_ready_only_while_its_dependencies_answer(services):
    for role in ("registry", "database", "storage", "master"):
        services.start(role)
    readyz = services.url("master", "/readyz")
    assert requests.get(readyz, timeout=5).status_code == 200
    services.stop("database", signal.SIGKILL)
    # Its address is still registered: the check asks the database itself.
    answer = requests.get(readyz, timeout=5)
    assert answer.status_code == 503 and "database" in answer.json()["description"]
    services.start("database")
    assert requests.get(readyz, timeout=5).status_code == 200


def test_killed_worker_task_is_redone_after_lease_expires(services):
    for role in ("registry", "database", "storage", "master"):
        services.start(role)
    services.start("worker", concurrency="1", worker_mode="thread")
    image = noise_png((2500, 2500))
    task_id = upload(services, image)
    wait_state(services, task_id, "in progress", timeout=10)
    services.stop("worker", signal.SIGKILL)
    assert status(services, task_id)["stateName"] == "in progress"
    services.start("worker", concurrency="1")
    task = wait_state(services, task_id, "finished", timeout=60)
    assert task["attempts"] == 2
    assert same_pixels(decode(download(services, task_id)), swapped(image))


def test_services_start_in_any_order_and_find_each_other(services):
    for role in ("master", "worker", "frontend", "storage", "database"):
        services.start(role, wait=False)
    services.start("registry")
    for role in ("master", "worker", "frontend"):
        services.wait_ready(role)
    task_id = upload(services, png_bytes())
    wait_state(services, task_id, "finished")


def test_bad_inputs_get_their_status(services):
    services.start_all()
    master = services.url("master")
    cases = [
        (requests.post(f"{master}/new", data=b"hello", timeout=5), 415),
        (requests.post(f"{master}/new", data=b"", timeout=5), 400),
        (requests.get(f"{master}/get", params={"id": "1"}, timeout=5), 400),
        (requests.get(f"{master}/get", params={"id": "A" * 22}, timeout=5), 404),
        (requests.get(f"{master}/isReady", params={"id": "A" * 22}, timeout=5), 404),
        (requests.get(f"{master}/new", timeout=5), 405),
        (requests.post(f"{master}/registerTaskFinished", params={"id": "A" * 22}, timeout=5), 401),
        (
            requests.post(
                f"{master}/registerTaskFinished",
                params={"id": "A" * 22},
                headers={"Authorization": f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"},
                timeout=5,
            ),
            400,
        ),
        (requests.post(services.url("database", "/newTask"), timeout=5), 401),
        (requests.get(services.url("storage", "/getImage"), timeout=5), 401),
        (
            requests.post(
                services.url("registry", "/set"),
                params={"key": "masterAddress", "value": "x:1"},
                timeout=5,
            ),
            401,
        ),
    ]
    for response, expected in cases:
        assert response.status_code == expected, (response.url, response.text)
        if expected != 405:
            assert response.json()["description"]
    big = b"\x89PNG\r\n\x1a\n" + b"0" * (50 * 1024 * 1024)
    assert requests.post(f"{master}/new", data=big, timeout=30).status_code == 413
    pending = upload(services, png_bytes((1500, 1500)))
    early = requests.get(f"{master}/get", params={"id": pending}, timeout=5)
    assert early.status_code in (200, 409)


def test_sigterm_lets_the_worker_finish_its_task_and_exit(services):
    for role in ("registry", "database", "storage", "master"):
        services.start(role)
    services.start("worker", concurrency="1")
    image = noise_png((2000, 2000), seed=3)
    task_id = upload(services, image)
    wait_state(services, task_id, "in progress", timeout=10)
    assert services.stop("worker", signal.SIGTERM) == 0
    task = status(services, task_id)
    assert task["stateName"] in ("finished", "queued"), "finished, or given back untouched"
    assert task["attempts"] in (0, 1)
    services.start("worker", concurrency="1")
    wait_state(services, task_id, "finished", timeout=30)
    assert same_pixels(decode(download(services, task_id)), swapped(image))


def _loops_running(services: Services) -> bool:
    text = requests.get(services.url("worker", "/metrics"), timeout=5).text
    return total(samples(text), "darkroom_worker_loops") >= 2


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_an_idle_worker_stops_at_once_and_its_claims_lease_nothing(services, mode):
    # Its loops wait in 30 s claims: the worker used to wait them out (a rollout's every pod).
    for role in ("registry", "database", "storage", "master"):
        services.start(role, lease_seconds="60")
    services.start("worker", worker_mode=mode, concurrency="2", claim_wait_seconds="30")
    wait_until(lambda: _loops_running(services), 10, "the loops running")
    started = time.monotonic()
    assert services.stop("worker", signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    # The database saw the claims' callers go: the next job is not leased to them (it would
    # wait 60 s for the lease to run out), the next worker takes it at once.
    task_id = upload(services, png_bytes((5, 5)))
    services.start("worker", concurrency="1")
    task = wait_state(services, task_id, "finished", timeout=20)
    assert task["attempts"] == 1


def _routes_answered(services: Services, role: str) -> set[str]:
    """The routes ``role`` has answered requests on, from its ``/metrics``."""
    text = requests.get(services.url(role, "/metrics"), timeout=5).text
    return {
        line.split('route="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("darkroom_http_requests_total{")
    }


def test_workers_claim_and_finish_at_the_database_not_through_the_master(services):
    """Issue 12: one exchange per leased call instead of the master's relay of it."""
    services.start_all()
    task_id = upload(services, png_bytes((9, 9)))
    wait_state(services, task_id, "finished")
    assert {"/getNewTask", "/finishTask"} <= _routes_answered(services, "database")
    relayed = {"/getNewTask", "/registerTaskFinished", "/heartbeat", "/failTask", "/releaseTask"}
    assert not relayed & _routes_answered(services, "master")


def test_roles_that_mount_the_storage_volume_need_no_storage_service(services):
    """``DARKROOM_STORAGE_VOLUME`` (what ``darkroom up`` sets): the master and the worker read
    and write the images on the volume themselves; jobs run with no storage process at all,
    a large image streamed both ways, and a too-large upload still gets the storage's 413."""
    volume = {"storage_volume": str(services.data_dir)}
    services.start("registry")
    services.start("database")
    services.start("master", **volume, max_upload_bytes=str(4 * 1024 * 1024))
    services.start("worker", **volume)
    assert "storage" not in services.processes
    large = noise_png((1200, 900))  # about 3 MB: several chunks each way
    images = [png_bytes((9, 9), seed=1), large]
    ids = [upload(services, image) for image in images]
    for task_id, image in zip(ids, images, strict=True):
        wait_state(services, task_id, "finished")
        assert same_pixels(decode(download(services, task_id)), swapped(image))
    assert sorted(path.name for path in (services.data_dir / "working").iterdir()) == sorted(ids)
    too_large = requests.post(
        services.url("master", "/new"), data=b"\x89PNG" + bytes(5 * 1024 * 1024), timeout=10
    )
    assert too_large.status_code == 413 and too_large.json()["description"]
    ready = requests.get(services.url("master", "/readyz"), timeout=5)
    assert ready.status_code == 200, "the storage service is not the master's dependency here"


def test_roles_on_the_task_file_run_a_job_with_no_exchange_with_the_database(services):
    """``DARKROOM_DATABASE_DIRECT`` (what ``darkroom up`` sets): the master and the worker loop
    processes call the SQLite file themselves; a job's create, enqueue, claim, finish and the
    master's long poll cost the database role no request, and its own routes still see it."""
    direct = {"database_direct": "true"}
    services.start("registry")
    services.start("database")
    services.start("storage")
    services.start("master", **direct)
    services.start("worker", **direct, concurrency="2")
    image = png_bytes((9, 9), seed=3)
    task_id = upload(services, image)
    ready = requests.get(
        services.url("master", "/isReady"), params={"id": task_id, "wait": 20}, timeout=30
    )
    assert ready.text == "1", "the long poll ends when a worker process finishes the job"
    assert same_pixels(decode(download(services, task_id)), swapped(image))
    job_routes = {"/newTask", "/enqueueTask", "/getNewTask", "/finishTask", "/getById"}
    assert not job_routes & _routes_answered(services, "database")
    internal = {"Authorization": f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"}
    listed = requests.get(services.url("database", "/list"), headers=internal, timeout=5).text
    assert f"{task_id} 2 finished" in listed, "the database role reads what the others wrote"
    unknown = requests.get(services.url("master", "/status"), params={"id": "A" * 22}, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["title"] == "Unknown task"


@pytest.mark.parametrize("role", ["master", "worker"])
def test_a_role_told_of_a_volume_that_is_not_there_stops_saying_why(services, role):
    missing = services.data_dir.parent / "not-mounted"
    command = [sys.executable, "-m", "darkroom", "serve", role, "--port", "0"]
    env = {**services.env, "DARKROOM_STORAGE_VOLUME": str(missing)}
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert f"DARKROOM_STORAGE_VOLUME={missing}: no such directory" in child.stderr
    assert not missing.exists()


@pytest.mark.parametrize("role", ["master", "worker"])
def test_a_role_on_a_task_file_that_is_not_there_stops_saying_why(services, role):
    """``DARKROOM_DATABASE_DIRECT`` where the database's data directory is not: a new file
    there would hold tasks no other role sees."""
    elsewhere = services.data_dir.parent / "not-the-databases"
    command = [sys.executable, "-m", "darkroom", "serve", role, "--port", "0"]
    env = {
        **services.env,
        "DARKROOM_DATABASE_DIRECT": "true",
        "DARKROOM_DATA_DIR": str(elsewhere),
        "DARKROOM_STORAGE_VOLUME": "",
    }
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert f"no task file at {elsewhere / 'tasks.sqlite3'}" in child.stderr
    assert not (elsewhere / "tasks.sqlite3").exists()
