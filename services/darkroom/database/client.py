"""Calling the database service (used by the master).

Error answers are raised as ``darkroom.contract.errors`` types.
"""

from __future__ import annotations

from typing import Any

import requests

from darkroom.contract.webhooks import Attempt
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

    def create(self, pipeline: str, *, webhook_url: str | None = None) -> str:
        params = {"pipeline": pipeline, "webhook": webhook_url}
        with self._checked("POST", "/newTask", params=params) as response:
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

    # -- webhook deliveries ---------------------------------------------------------------
    def claim_delivery(self, lease_seconds: float) -> dict[str, Any] | None:
        """A due webhook delivery leased to this master, with its job's document; None if none."""
        params = {"lease_seconds": lease_seconds}
        with self._checked("POST", "/claimDelivery", params=params) as response:
            return None if response.status_code == 204 else response.json()

    def report_delivery(
        self, task_id: str, lease: str, attempt: Attempt, retry_in: float | None
    ) -> dict[str, Any]:
        """Record an attempt's outcome; ``retry_in`` None: no more attempts unless delivered."""
        params = {"id": task_id, "lease": lease, "retry_in": retry_in, **attempt.to_json()}
        with self._checked("POST", "/reportDelivery", params=params) as response:
            return response.json()
