"""A worker's leased calls about tasks: claim, heartbeat, finish, fail, release.

The same calls reach the database directly (what Darkroom's workers do: one exchange per call)
or the master's seed routes, which relay them to the database (what seed-style workers use).
Only the paths differ; errors are raised as ``darkroom.contract.errors`` types, a lost lease as
``LeaseLost``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from darkroom.contract.errors import ServiceConflict
from darkroom.contract.events import Stage, encode_stages
from darkroom.contract.tasks import TASK_CANCELLED_TITLE, Claim
from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream
from darkroom.core.transport import Response


class LeaseLost(ServiceConflict):
    """This worker no longer holds the task (a conflict on a leased call)."""


class TaskWasCancelled(LeaseLost):
    """The task's client cancelled it: the worker stops and stores nothing as finished."""


def lost_lease(conflict: ServiceConflict) -> LeaseLost:
    """What a conflict on a leased call means: the task's cancellation, or a lost lease."""
    lost = TaskWasCancelled if conflict.title == TASK_CANCELLED_TITLE else LeaseLost
    return lost(conflict.service, conflict.status, conflict.title, conflict.description)


@dataclasses.dataclass(frozen=True)
class LeaseRoutes:
    """The paths of the leased calls on one service."""

    claim: str = "/getNewTask"
    heartbeat: str = "/heartbeat"
    finish: str = "/finishTask"
    fail: str = "/failTask"
    release: str = "/releaseTask"


class TaskLeases:
    """The calls a worker makes about the tasks it claims, on ``service`` at ``routes``."""

    def __init__(self, service: ServiceClient, name: str, routes: LeaseRoutes) -> None:
        self.service = service
        self._name = name
        self._routes = routes

    def _post(self, path: str, params: dict[str, Any], **kwargs: Any) -> Response:
        response = self.service.request("POST", path, params=params, **kwargs)
        try:
            raise_for_upstream(response, self._name)
        except ServiceConflict as exc:
            response.close()
            raise lost_lease(exc) from exc
        return response

    def claim(self, wait_seconds: float, timeout: float) -> Claim | None:
        with self._post(
            self._routes.claim, {"wait": wait_seconds}, timeout=wait_seconds + timeout
        ) as response:
            if response.status_code == 204:
                return None
            return Claim.from_document(response.json())

    def heartbeat(self, claim: Claim, *, stages: Sequence[Stage] = ()) -> None:
        """Extend the lease; ``stages``: the processing stages done since the last call."""
        params = _with_stages({"id": claim.task_id, "lease": claim.lease}, stages)
        self._post(self._routes.heartbeat, params).close()

    def finish(
        self, claim: Claim, notes: Sequence[str] = (), *, stages: Sequence[Stage] = ()
    ) -> None:
        """The task is done; ``notes`` (what of the image was skipped, kept or removed) go to
        its status (its ``notes``, and joined in its ``error`` field), the last ``stages`` to
        its events."""
        params: dict[str, Any] = _with_stages({"id": claim.task_id, "lease": claim.lease}, stages)
        if notes:
            params["note"] = list(notes)
        self._post(self._routes.finish, params).close()

    def fail(
        self, claim: Claim, error: str, retryable: bool, *, stages: Sequence[Stage] = ()
    ) -> None:
        params = {"id": claim.task_id, "lease": claim.lease, "error": error, "retry": retryable}
        self._post(self._routes.fail, _with_stages(params, stages)).close()

    def release(self, claim: Claim) -> None:
        self._post(self._routes.release, {"id": claim.task_id, "lease": claim.lease}).close()

    def close(self) -> None:
        """Nothing to close over HTTP (a store of the worker's own is closed)."""


def _with_stages(params: dict[str, Any], stages: Sequence[Stage]) -> dict[str, Any]:
    """``params`` with the ``stages`` parameter when there are any."""
    if stages:
        params["stages"] = encode_stages(stages)
    return params
