"""Errors of calls between services, raised by the role clients.

A caller catches a type (the task's image is gone, the lease was lost, the service is down)
instead of reading status numbers; each error says which service answered, and carries the
answer's status, title and description so that a role relaying it tells its own client the
same (``darkroom.core.errors`` turns them into HTTP answers, in one handler). Errors from the
HTTP library itself are chained as the ``__cause__``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Another service refused or failed a call; ``status`` is the HTTP status to answer with."""

    def __init__(
        self,
        service: str,
        status: int,
        title: str,
        description: str,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{service}: {status} {title}: {description}")
        self.service = service
        self.status = status
        self.title = title
        self.description = description
        self.retry_after = retry_after


class ServiceNotFound(ServiceError):
    """The service does not know what the call names (a task, an image)."""


class ServiceConflict(ServiceError):
    """The call does not fit the state of what it names (a lease lost, a job not finished)."""


class ServiceUnavailable(ServiceError):
    """The service is down, restarting or out of reach; the same call may work later."""


class ServiceFailed(ServiceError):
    """The service failed (an internal error): answered as 502, saying which hop failed."""


def error_for_status(status: int) -> type[ServiceError]:
    """The error type of an error answer with ``status``."""
    if status == 404:
        return ServiceNotFound
    if status == 409:
        return ServiceConflict
    if status == 503:
        return ServiceUnavailable
    # 507 (disk full) says something the client can act on: passed on as it is.
    if status >= 500 and status != 507:
        return ServiceFailed
    return ServiceError
