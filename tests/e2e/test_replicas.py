"""The system on PostgreSQL: ``darkroom up`` with ``DARKROOM_DATABASE_URL``, and two database
and two storage processes sharing one data directory (``harness.replicated``), where jobs go in
through either half and come out right through the other."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import requests

from harness.replicated import ReplicatedDarkroom
from harness.up import DarkroomUp
from support.images import decode, png_bytes, same_pixels, swapped
from support.processes import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicated(tmp_path, postgres_url) -> Iterator[ReplicatedDarkroom]:
    system = ReplicatedDarkroom(
        postgres_url, tmp_path / "data", tmp_path, lease_seconds="3", concurrency="2"
    )
    try:
        system.start_all()
        yield system
    finally:
        system.stop_all()


def _finished(status_url: str, task_id: str) -> bool:
    answer = requests.get(status_url, params={"id": task_id, "wait": "5"}, timeout=15)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stateName"] != "failed", answer.json()
    return answer.json()["stateName"] == "finished"


def test_jobs_flow_through_two_database_and_two_storage_replicas(replicated):
    images = [png_bytes((9 + n, 7 + n), "RGBA", seed=n) for n in range(12)]
    jobs = []
    for n, image in enumerate(images):
        half, other = ("a", "b") if n % 2 == 0 else ("b", "a")
        answer = requests.post(replicated.url("master", "/new", half), data=image, timeout=15)
        assert answer.status_code == 200, answer.text
        jobs.append((answer.text, image, other))
    for task_id, image, other in jobs:
        # asked and downloaded through the half it was not uploaded to
        status = replicated.url("master", "/status", other)
        wait_until(lambda t=task_id, u=status: _finished(u, t), 60, f"{task_id} done")
        result = requests.get(
            replicated.url("master", "/get", other), params={"id": task_id}, timeout=15
        )
        assert result.status_code == 200, result.text
        assert same_pixels(decode(result.content), swapped(image))
    for half in ("a", "b"):
        listed = requests.get(
            replicated.url("database", "/list", half),
            params={"limit": 100},
            headers={**replicated.auth, "Accept": "application/json"},
            timeout=10,
        ).json()
        assert {task["id"] for task in listed} == {task_id for task_id, _, _ in jobs}


def test_darkroom_up_runs_on_postgresql_with_database_url(tmp_path, postgres_url):
    system = DarkroomUp(tmp_path / "data", tmp_path / "up.log", 1, database_url=postgres_url)
    system.launch().wait_for_log("Darkroom is up", 60)
    try:
        image = png_bytes((13, 11), "RGB")
        answer = system.session.post(system.url("master", "/new"), data=image, timeout=15)
        assert answer.status_code == 200, answer.text
        task_id = answer.text
        status = system.url("master", "/status")
        wait_until(lambda: _finished(status, task_id), 60, f"{task_id} done")
        result = system.session.get(system.url("master", "/get"), params={"id": task_id})
        assert same_pixels(decode(result.content), swapped(image))
        assert not (tmp_path / "data" / "tasks.sqlite3").exists(), "the tasks are in PostgreSQL"
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT id FROM tasks").fetchall() == [(task_id,)]
    finally:
        system.stop(30)
