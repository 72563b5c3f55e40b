"""Task ids: unguessable, URL-safe, and strictly validated wherever one arrives."""

from __future__ import annotations

import re
import secrets

import falcon

# 16 random bytes = 128 bits, base64url without padding = 22 characters
_TOKEN_BYTES = 16
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


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
            description=f"Parameter {name!r} must be a task id: 22 characters of A-Z a-z 0-9 _ -.",
        )
    return value
