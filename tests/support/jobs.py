"""A client's calls to a running master, for the end-to-end tests; each asserts its 200."""

from __future__ import annotations

from typing import Protocol

import requests

from harness.launch import wait_until


class System(Protocol):
    """Anything that says where its roles listen: ``Services``, ``DarkroomUp``."""

    def url(self, role: str, path: str = "") -> str: ...


def upload(system: System, body: bytes, **params: str) -> str:
    """The id of a new job for ``body`` (``params``: ``op``, ``webhook``, ...)."""
    response = requests.post(system.url("master", "/new"), data=body, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def status(system: System, task_id: str) -> dict:
    response = requests.get(system.url("master", "/status"), params={"id": task_id}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(system: System, task_id: str, *states: str, timeout: float = 30) -> dict:
    """The job's status once it is in one of ``states``."""

    def reached() -> dict | None:
        task = status(system, task_id)
        return task if task["stateName"] in states else None

    return wait_until(reached, timeout, f"task {task_id} to reach {states}")


def download(system: System, task_id: str) -> bytes:
    response = requests.get(system.url("master", "/get"), params={"id": task_id}, timeout=10)
    assert response.status_code == 200, response.text
    return response.content
