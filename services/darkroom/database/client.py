"""Calling the database service (used by the master).

Error answers are raised as ``darkroom.contract.errors`` types.
"""

from __future__ import annotations

from typing import Any

import requests

from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream


class DatabaseClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The raw answer, for routes the master relays as they are."""
        return self._service.request(method, path, **kwargs)

    def _checked(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._service.request(method, path, **kwargs)
        raise_for_upstream(response, "database")
        return response

    def create(self, pipeline: str) -> str:
        with self._checked("POST", "/newTask", params={"pipeline": pipeline}) as response:
            return response.text

    def enqueue(self, task_id: str) -> None:
        self._checked("POST", "/enqueueTask", params={"id": task_id}).close()

    def get(self, task_id: str, wait: float = 0.0, state: str | None = None) -> dict[str, Any]:
        """The task; with ``wait``, once it leaves ``state`` (default: once it ends) or after it."""
        params: dict[str, Any] = {"id": task_id}
        kwargs: dict[str, Any] = {}
        if wait > 0:
            params.update(wait=wait, state=state)
            kwargs["timeout"] = self._service.timeout + wait
        with self._checked("GET", "/getById", params=params, **kwargs) as response:
            return response.json()

    # -- events (live progress) -----------------------------------------------------------
    def events(self, task_id: str, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """The task's events numbered above ``after``; with ``wait``, once there is one or after
        it (then an empty list). ServiceUnavailable when the database has no slot to wait in."""
        params: dict[str, Any] = {"id": task_id, "after": after}
        kwargs: dict[str, Any] = {}
        if wait > 0:
            params["wait"] = wait
            kwargs["timeout"] = self._service.timeout + wait
        with self._checked("GET", "/events", params=params, **kwargs) as response:
            return response.json()
