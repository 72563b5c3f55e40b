"""Errors of calls to the Kubernetes API, as the registry's ConfigMap code sees them.

The API adapter (``kubeapi``) raises these, with the client library's exception chained as the
cause, so the watch loop and the store catch types without importing ``kubernetes`` and never
read status numbers (as kopf's ``_cogs/clients/errors.py``).
"""

from __future__ import annotations


class KubeApiError(Exception):
    """A call to the Kubernetes API failed; worth retrying later."""


class ApiUnreachable(KubeApiError):
    """The call did not get an answer: refused, reset, timed out, cut mid-stream."""


class ApiRefused(KubeApiError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.body = status, reason, body


class NotFound(ApiRefused):
    """404: the ConfigMap (or its namespace) does not exist."""


class Conflict(ApiRefused):
    """409: the object changed since the version a write was based on, or already exists."""


class Gone(ApiRefused):
    """410: the resourceVersion being watched from is too old: list again."""


class Invalid(ApiRefused):
    """422: the API server refused the object's contents."""


REFUSALS: dict[int, type[ApiRefused]] = {404: NotFound, 409: Conflict, 410: Gone, 422: Invalid}


def refused(status: int, reason: str, body: str = "") -> ApiRefused:
    """The error for an answer with ``status``: its own type where callers tell it apart."""
    return REFUSALS.get(status, ApiRefused)(status, reason, body)


def describe(error: BaseException) -> str:
    """A short line for logs and ``problem()``: the status, or the transport error's cause."""
    if isinstance(error, ApiRefused):
        return str(error)
    if isinstance(error, ApiUnreachable) and error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"[:300]
