"""Errors shared by every role, and turning a failed call to another service into an answer."""

from __future__ import annotations

import errno
import re

import falcon
import requests

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


class UpstreamUnavailable(falcon.HTTPServiceUnavailable):
    """Another Darkroom service could not be reached; the client may retry.

    The answer names the service and the kind of failure only: the underlying error quotes
    internal addresses and URLs (with a worker's lease). That is kept, secrets redacted, in
    ``detail`` for the log.
    """

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.detail = redact_secrets(reason)
        super().__init__(
            title="Service unavailable",
            description=f"The {service} service is not reachable ({_failure_kind(reason)}).",
            retry_after=1,
        )


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(what: str) -> falcon.HTTPError:
    return falcon.HTTPInsufficientStorage(
        title="Disk full", description=f"The {what} has no space left; nothing was stored."
    )


def raise_for_upstream(response: requests.Response, service: str) -> None:
    """Re-raise an upstream error answer with its real status and message, never as a 200."""
    if response.status_code < 400:
        return
    title, description = _error_text(response)
    status = falcon.code_to_http_status(response.status_code)
    if response.status_code >= 500 and response.status_code not in (503, 507):
        # The upstream's internals are its own business: say which hop failed.
        raise falcon.HTTPBadGateway(
            title="Upstream error",
            description=f"The {service} service failed ({response.status_code}): {description}",
        )
    raise falcon.HTTPError(status, title=title, description=description)


def _error_text(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:500]
        return response.reason or "Error", text
    if isinstance(body, dict):
        return str(body.get("title", response.reason)), str(body.get("description", ""))
    return response.reason or "Error", str(body)[:500]
