"""Calling the master (used by workers, the frontend and ``darkroom submit``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import requests

from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream


@dataclasses.dataclass(frozen=True)
class Claim:
    task_id: str
    lease: str
    pipeline: str
    attempts: int


class LeaseLost(Exception):
    """The master says this worker no longer holds the task."""


class MasterClient:
    def __init__(self, service: ServiceClient) -> None:
        self.service = service

    def _post(self, path: str, params: dict[str, Any], **kwargs: Any) -> requests.Response:
        response = self.service.request("POST", path, params=params, **kwargs)
        if response.status_code == 409:
            response.close()
            raise LeaseLost(params.get("id"))
        raise_for_upstream(response, "master")
        return response

    def claim(self, wait_seconds: float, timeout: float) -> Claim | None:
        with self._post(
            "/getNewTask", {"wait": wait_seconds}, timeout=wait_seconds + timeout
        ) as response:
            if response.status_code == 204:
                return None
            task = response.json()
        return Claim(task["id"], task["lease"], task["pipeline"], task["attempts"])

    def heartbeat(self, claim: Claim) -> None:
        self._post("/heartbeat", {"id": claim.task_id, "lease": claim.lease}).close()

    def finish(self, claim: Claim) -> None:
        self._post("/registerTaskFinished", {"id": claim.task_id, "lease": claim.lease}).close()

    def fail(self, claim: Claim, error: str, retryable: bool) -> None:
        params = {"id": claim.task_id, "lease": claim.lease, "error": error, "retry": retryable}
        self._post("/failTask", params).close()

    def release(self, claim: Claim) -> None:
        self._post("/releaseTask", {"id": claim.task_id, "lease": claim.lease}).close()
