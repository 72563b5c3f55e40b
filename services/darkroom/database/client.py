"""Calling the database service (used by the master; ``DatabaseLeases`` by the workers).

Error answers are raised as ``darkroom.contract.errors`` types.
"""

from __future__ import annotations

from typing import Any

from darkroom.contract.tasks import EndedTasks, IdempotencyKeyUsed, KeyHolder
from darkroom.contract.webhooks import Attempt
from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream
from darkroom.core.leases import LeaseRoutes, TaskLeases
from darkroom.core.transport import Response


class DatabaseLeases(TaskLeases):
    """A worker's leased calls, straight to the database: one exchange each, where the
    master's seed routes take two (docs/benchmarks.md)."""

    def __init__(self, service: ServiceClient) -> None:
        super().__init__(service, "database", LeaseRoutes())


class DatabaseClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    def close(self) -> None:
        """Nothing to close over HTTP (a store of the master's own is closed)."""

    def call(self, method: str, path: str, **kwargs: Any) -> Response:
        """The raw answer, for routes the master relays as they are."""
        return self._service.request(method, path, **kwargs)

    def _checked(self, method: str, path: str, **kwargs: Any) -> Response:
        response = self._service.request(method, path, **kwargs)
        raise_for_upstream(response, "database")
        return response

    def create(
        self,
        pipeline: str,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """A new uploading task's id; with ``idempotency_key``, IdempotencyKeyUsed naming the
        task the key is kept for, if it is."""
        params = {"pipeline": pipeline, "webhook": webhook_url, "idempotencyKey": idempotency_key}
        with self._checked("POST", "/newTask", params=params) as response:
            if response.status_code == 200:  # 201 is a new task
                raise IdempotencyKeyUsed(KeyHolder.from_document(response.json()))
            return response.text

    def enqueue(self, task_id: str, *, body_sha256: str | None = None) -> None:
        params = {"id": task_id, "bodySha256": body_sha256}
        self._checked("POST", "/enqueueTask", params=params).close()

    def abandon_upload(self, task_id: str, error: str) -> None:
        """Fail an upload that could not be stored (it frees its idempotency key)."""
        self._checked("POST", "/failTask", params={"id": task_id, "error": error}).close()

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel the task; its document. ServiceConflict when it is finished or failed."""
        with self._checked("POST", "/cancelTask", params={"id": task_id}) as response:
            return response.json()

    def get(self, task_id: str, wait: float = 0.0, state: str | None = None) -> dict[str, Any]:
        """The task; with ``wait``, once it leaves ``state`` (default: once it ends) or after it."""
        params: dict[str, Any] = {"id": task_id}
        if wait > 0:
            params["state"] = state
        with self._long_poll("/getById", params, wait) as response:
            return response.json()

    def ended_tasks(self, epoch: str | None, after: int, wait: float = 0.0) -> EndedTasks:
        """The feed of ended tasks after position ``after`` of ``epoch``; with ``wait``, once
        there is one or after it."""
        params: dict[str, Any] = {"epoch": epoch, "after": after}
        with self._long_poll("/endedTasks", params, wait) as response:
            return EndedTasks.from_document(response.json())

    def _long_poll(self, path: str, params: dict[str, Any], wait: float) -> Response:
        """``GET path`` that the database may hold up to ``wait`` seconds (0: answered at once)."""
        if wait <= 0:
            return self._checked("GET", path, params=params)
        timeout = self._service.timeout + wait
        return self._checked("GET", path, params={**params, "wait": wait}, timeout=timeout)

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

    # -- events (live progress) -----------------------------------------------------------
    def events(self, task_id: str, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """The task's events numbered above ``after``; with ``wait``, once there is one or after
        it (then an empty list). ServiceUnavailable when the database has no slot to wait in."""
        with self._long_poll("/events", {"id": task_id, "after": after}, wait) as response:
            return response.json()
