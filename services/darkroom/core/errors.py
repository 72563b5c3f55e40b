"""Errors shared by every role: reading another service's error answer into a typed error
(``darkroom.contract.errors``), and turning such an error into this role's own answer."""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

import falcon

from darkroom.contract.errors import (
    ServiceError,
    ServiceFailed,
    ServiceUnavailable,
    error_for_status,
)
from darkroom.core.transport import ErrorAnswer, Response

log = logging.getLogger("darkroom.app")

# Query parameters that carry secrets (a worker's lease is sent as ?lease=...).
_SECRET_PARAMETER = re.compile(r"\b(lease|token|api[_-]?key|password|secret)=[^&\s'\")]+", re.I)
# What the public may learn of a failed connection: its kind, never addresses or URLs.
_FAILURE_KINDS = (
    (re.compile(r"not registered"), None),  # "masterAddress is not registered": said as is
    (re.compile(r"timed? ?out", re.I), "timed out"),
    (re.compile(r"refused", re.I), "connection refused"),
    (re.compile(r"resolve|name or service not known|getaddrinfo", re.I), "address not found"),
    (re.compile(r"reset|aborted|disconnected|broken", re.I), "connection lost"),
)


def redact_secrets(text: str) -> str:
    """``text`` with the values of secret query parameters replaced (for logs)."""
    return _SECRET_PARAMETER.sub(r"\1=[redacted]", text)


def _failure_kind(reason: str) -> str:
    for pattern, kind in _FAILURE_KINDS:
        if pattern.search(reason):
            return kind or reason
    return "connection failed"


class UpstreamUnavailable(ServiceUnavailable):
    """Another Darkroom service could not be reached at all; the client may retry in a second.

    The answer names the service and the kind of failure only: the underlying error quotes
    internal addresses and URLs (with a worker's lease). That is kept, secrets redacted, in
    ``detail`` for the log.
    """

    def __init__(self, service: str, reason: str) -> None:
        self.detail = redact_secrets(reason)
        super().__init__(
            service,
            503,
            "Service unavailable",
            f"The {service} service is not reachable ({_failure_kind(reason)}).",
            retry_after=1,
        )


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(what: str) -> falcon.HTTPError:
    return falcon.HTTPInsufficientStorage(
        title="Disk full", description=f"The {what} has no space left; nothing was stored."
    )


def raise_for_upstream(response: Response, service: str) -> None:
    """Raise an error answer as its ``ServiceError`` type, keeping its status and message."""
    if response.status_code < 400:
        return
    title, description = _error_text(response)
    kind = error_for_status(response.status_code)
    # The answer itself as the cause, for whoever debugs it.
    cause = ErrorAnswer(response)
    if kind is ServiceFailed:
        # The upstream's internals are its own business: say which hop failed.
        raise ServiceFailed(
            service,
            502,
            "Upstream error",
            f"The {service} service failed ({response.status_code}): {description}",
        ) from cause
    retry_after = _retry_after(response)
    raise kind(service, response.status_code, title, description, retry_after) from cause


def _retry_after(response: Response) -> int | None:
    """The answer's ``Retry-After`` in seconds, passed on (a relayed 503 without it made
    clients retry at once); None when absent or not a small number of seconds."""
    raw = (response.headers.get("Retry-After") or "").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        return None
    return int(raw)


def service_error(req: falcon.Request, resp: falcon.Response, ex: ServiceError, params: Any):
    """The one handler of every role: a failed call to another service, as this role's answer."""
    if isinstance(ex, UpstreamUnavailable):
        # The answer only names the service; the address and the error are for the operator.
        log.warning(
            "service unavailable",
            extra={"service": ex.service, "error": ex.detail, "route": req.uri_template},
        )
    headers = {} if ex.retry_after is None else {"Retry-After": str(ex.retry_after)}
    raise falcon.HTTPError(
        falcon.code_to_http_status(ex.status),
        title=ex.title,
        description=ex.description,
        headers=headers or None,
    ) from ex


def _error_text(response: Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:500]
        return response.reason or "Error", text
    if isinstance(body, dict):
        return str(body.get("title", response.reason)), str(body.get("description", ""))
    return response.reason or "Error", str(body)[:500]
