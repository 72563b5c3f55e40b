"""The database's tasks called in this process, where a master or a worker can open them itself
(``database_direct``: ``darkroom up`` sets it; the SQLite file of the data directory, or the
PostgreSQL database at ``database_url``).

A job's calls about its task (create, enqueue, the master's reads and feed; a worker's claim,
heartbeat, finish, fail and release) then cost no exchange with the database role: they are
the store's own methods, under the same rules (the store's), with the same answers
(``darkroom.database.answers``) raised as the HTTP clients raise them. What stays with the
database role: its sweeps of leases and old tasks, and every other route (the seed's relays,
webhooks, events, cancel, lists), which the master still calls over HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from darkroom.contract.errors import ServiceConflict, ServiceError, error_for_status
from darkroom.contract.events import Stage
from darkroom.contract.limits import MAX_ERROR_LENGTH, MAX_PIPELINE_CHARS
from darkroom.contract.tasks import (
    Claim,
    EndedTasks,
    TaskState,
    waited_through,
)
from darkroom.contract.webhooks import MAX_WEBHOOK_URL_CHARS
from darkroom.core.config import Config
from darkroom.core.discovery import ServiceClient
from darkroom.core.leases import LeaseRoutes, TaskLeases, lost_lease
from darkroom.database.answers import (
    STORE_ERRORS,
    answer_for,
    kept_notes,
    kept_text,
    text_refusal,
)
from darkroom.database.app import task_document
from darkroom.database.client import DatabaseClient, DatabaseLeases
from darkroom.database.service import open_store_or_exit, sqlite_path
from darkroom.database.store import TaskStore

SERVICE = "database"


@contextlib.contextmanager
def _as_answers() -> Iterator[None]:
    """The store's refusals raised as the database's answers are by its HTTP clients."""
    try:
        yield
    except STORE_ERRORS as exc:
        answer = answer_for(exc)
        if answer is None:
            raise
        kind = error_for_status(answer.status)
        raise kind(
            SERVICE, answer.status, answer.title, answer.description, answer.retry_after
        ) from exc


class DirectDatabase(DatabaseClient):
    """The master's calls on a job's way (create, enqueue, abandon, reads, the feed of ended
    tasks) made on ``store``; every other one through ``service``, the database's API."""

    def __init__(self, service: ServiceClient, store: TaskStore) -> None:
        super().__init__(service)
        self._store = store

    def create(
        self,
        pipeline: str,
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        for name, value, limit in (
            ("pipeline", pipeline, MAX_PIPELINE_CHARS),
            ("webhook", webhook_url, MAX_WEBHOOK_URL_CHARS),
        ):
            if (refusal := text_refusal(value, name, limit)) is not None:
                raise ServiceError(SERVICE, 400, f"Invalid {name}", refusal)
        with _as_answers():
            task = self._store.create(
                pipeline, webhook_url=webhook_url, idempotency_key=idempotency_key
            )
        return task.id

    def enqueue(self, task_id: str, *, body_sha256: str | None = None) -> None:
        with _as_answers():
            self._store.enqueue(task_id, body_sha256=body_sha256)

    def abandon_upload(self, task_id: str, error: str) -> None:
        with _as_answers():
            self._store.fail(task_id, None, kept_text(error)[:MAX_ERROR_LENGTH], retryable=False)

    def get(self, task_id: str, wait: float = 0.0, state: str | None = None) -> dict[str, Any]:
        with _as_answers():
            if wait > 0:
                waited = waited_through(None if state is None else TaskState(state))
                task = self._store.watch(task_id, waited, wait)
            else:
                task = self._store.get(task_id)
            return task_document(task, delivery=self._store.delivery(task_id))

    def ended_tasks(self, epoch: str | None, after: int, wait: float = 0.0) -> EndedTasks:
        with _as_answers():
            return self._store.ended(epoch, after, wait)

    def close(self) -> None:
        self._store.close()


class DirectLeases(TaskLeases):
    """A worker's leased calls made on ``store``; ``stopping`` set, a waiting claim ends and
    leases nothing (as the database's does when its caller's connection closes)."""

    def __init__(self, service: ServiceClient, store: TaskStore, stopping: threading.Event):
        super().__init__(service, SERVICE, LeaseRoutes())
        self._store = store
        self._stopping = stopping

    @contextlib.contextmanager
    def _leased(self) -> Iterator[None]:
        """As ``TaskLeases._post``: a conflict is a lost lease, or the task's cancellation."""
        try:
            with _as_answers():
                yield
        except ServiceConflict as exc:
            raise lost_lease(exc) from exc

    def claim(self, wait_seconds: float, timeout: float) -> Claim | None:
        with self._leased():
            task = self._store.claim(wait_seconds, self._stopping.is_set)
        if task is None:
            return None
        return Claim.from_document(task_document(task, with_lease=True))

    def heartbeat(self, claim: Claim, *, stages: Sequence[Stage] = ()) -> None:
        with self._leased():
            self._store.heartbeat(claim.task_id, claim.lease, stages=stages)

    def finish(
        self, claim: Claim, notes: Sequence[str] = (), *, stages: Sequence[Stage] = ()
    ) -> None:
        with self._leased():
            self._store.finish(claim.task_id, claim.lease, kept_notes(list(notes)), stages=stages)

    def fail(
        self, claim: Claim, error: str, retryable: bool, *, stages: Sequence[Stage] = ()
    ) -> None:
        error = kept_text(error)[:MAX_ERROR_LENGTH]
        with self._leased():
            self._store.fail(claim.task_id, claim.lease, error, retryable, stages=stages)

    def release(self, claim: Claim) -> None:
        with self._leased():
            self._store.release(claim.task_id, claim.lease)

    def close(self) -> None:
        self._store.close()


def database_for(config: Config, service: ServiceClient) -> DatabaseClient:
    """The master's database: the store in this process with ``database_direct``, else the
    database's API at ``service``."""
    if not config.database_direct:
        return DatabaseClient(service)
    return DirectDatabase(service, _open_direct(config))


def leases_for(config: Config, service: ServiceClient, stopping: threading.Event) -> TaskLeases:
    """A worker loop's leased calls: on the store in this process with ``database_direct``,
    else at the database's API at ``service``."""
    if not config.database_direct:
        return DatabaseLeases(service)
    return DirectLeases(service, _open_direct(config), stopping)


def _open_direct(config: Config) -> TaskStore:
    require_task_file(config)
    return open_store_or_exit(config)


def require_task_file(config: Config) -> None:
    """With ``database_direct`` on SQLite: the database role's file must be there. One made
    here instead (a data directory that is not the database's) would hold tasks no other role
    sees, so the role stops at its start saying why (ValueError: a configuration error), as on
    a storage volume that is not there."""
    path = sqlite_path(config)
    if config.database_direct and not config.database_url and not path.is_file():
        raise ValueError(
            f"DARKROOM_DATABASE_DIRECT: no task file at {path}; run this role where the"
            " database's data directory is (DARKROOM_DATA_DIR), give it DARKROOM_DATABASE_URL,"
            " or set DARKROOM_DATABASE_DIRECT=false to call the database's API"
        )
