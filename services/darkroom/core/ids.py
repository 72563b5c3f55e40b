"""Task ids: unguessable, URL-safe, and strictly validated wherever one arrives."""

from __future__ import annotations

import secrets

import falcon

from darkroom.contract.limits import TASK_ID_DESCRIPTION, TASK_ID_PATTERN

# 16 random bytes = 128 bits, base64url without padding = 22 characters
_TOKEN_BYTES = 16


def new_task_id() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def new_lease_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def is_task_id(value: str) -> bool:
    return TASK_ID_PATTERN.fullmatch(value) is not None


def require_task_id(req: falcon.Request, name: str = "id") -> str:
    """The task id from query parameter ``name``, or 400 saying what is wrong with it."""
    value = req.get_param(name, required=True)
    if not is_task_id(value):
        raise falcon.HTTPBadRequest(
            title="Invalid task id",
            description=f"Parameter {name!r} must be a task id: {TASK_ID_DESCRIPTION}.",
        )
    return value
