"""Query parameters several roles read the same way."""

from __future__ import annotations

import math

import falcon

from darkroom.contract.tasks import TaskState


def wait_param(req: falcon.Request, maximum: float) -> float:
    """``wait``: seconds a long poll may hold the request (0 when absent), capped at ``maximum``.

    A waiting request holds a server thread, hence the cap; NaN is refused because it passes
    every bound and would never end the wait.
    """
    wait = req.get_param_as_float("wait", min_value=0, default=0.0)
    if math.isnan(wait):
        raise falcon.HTTPInvalidParam("The value must be a number.", "wait")
    return min(wait, maximum)


def single_param(req: falcon.Request, name: str) -> str | None:
    """The query parameter ``name`` (None when absent), refused when given more than once.

    Falcon would keep one of the values silently; a client that sent two meant something else.
    """
    value = req.params.get(name)
    if isinstance(value, list):
        raise falcon.HTTPInvalidParam(f"Give it once, not {len(value)} times.", name)
    return value


def state_param(req: falcon.Request) -> TaskState | None:
    """``state``: a task state by its wire name (a long poll waits while the task is in it)."""
    name = req.get_param("state")
    if name is None:
        return None
    try:
        return TaskState.parse(name)
    except ValueError as exc:
        raise falcon.HTTPInvalidParam(str(exc), "state") from exc
