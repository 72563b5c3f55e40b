"""The database's HTTP API: the seed's routes plus leases, heartbeats and failures."""

from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import Any

import falcon
from prometheus_client import CollectorRegistry

from darkroom.contract.folders import result_version
from darkroom.contract.limits import (
    MAX_ERROR_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_NOTES,
    MAX_PIPELINE_CHARS,
)
from darkroom.contract.tasks import UNFINISHED_STATES, TaskState
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.errors import disk_full
from darkroom.core.ids import require_task_id
from darkroom.core.longpoll import LongPolls
from darkroom.core.params import state_param, wait_param
from darkroom.database.metrics import QueueCollector
from darkroom.database.store import (
    StoreUnavailable,
    Task,
    TaskConflict,
    TaskNotFound,
    TaskStore,
)

log = logging.getLogger(__name__)


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def task_document(task: Task, with_lease: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": task.id,
        "state": task.state.code,
        "stateName": task.state.value,
        "pipeline": task.pipeline,
        "attempts": task.attempts,
        "error": task.error,
        "notes": list(task.notes),
        "createdAt": _timestamp(task.created_at),
        "updatedAt": _timestamp(task.updated_at),
        "finishedAt": _timestamp(task.finished_at),
        # which stored result is the job's: the one made under the lease that finished it
        "result": (
            result_version(task.lease_token)
            if task.state == TaskState.FINISHED and task.lease_token
            else None
        ),
    }
    if with_lease:
        document["lease"] = task.lease_token
        document["leaseExpiresAt"] = _timestamp(task.lease_expires_at)
    return document


def _lease(req: falcon.Request) -> str:
    return req.get_param("lease", required=True)


def _text(value: str) -> str:
    """A worker's free text (an error, a note) as every store keeps it: PostgreSQL's text
    holds no NUL character, so none is kept (they say nothing to a reader anyway)."""
    return value.replace("\x00", "").strip()


def _success(resp: falcon.Response) -> None:
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = "success"


class Tasks:
    """Every task route; one store call each, with the store's errors mapped to statuses."""

    def __init__(self, store: TaskStore, max_wait: float, long_polls: LongPolls) -> None:
        self._store = store
        self._max_wait = max_wait
        self._long_polls = long_polls

    def on_post_new(self, req: falcon.Request, resp: falcon.Response) -> None:
        pipeline = req.get_param("pipeline", default="swap")
        if not pipeline or len(pipeline) > MAX_PIPELINE_CHARS or "\x00" in pipeline:
            raise falcon.HTTPBadRequest(
                title="Invalid pipeline",
                description=f"pipeline must be 1 to {MAX_PIPELINE_CHARS} characters, none NUL",
            )
        task = self._store.create(pipeline)
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = task.id

    def on_post_enqueue(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._store.enqueue(require_task_id(req))
        _success(resp)

    def on_get_by_id(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A task; with ``wait``, long-polls until it leaves ``state`` (default: until it ends)."""
        task_id = require_task_id(req)
        with self._long_polls.wait(wait_param(req, self._max_wait)) as wait:
            if wait:
                state = state_param(req)
                while_in = UNFINISHED_STATES if state is None else {state}
                task = self._store.watch(task_id, while_in, wait)
            else:
                task = self._store.get(task_id)
        resp.media = task_document(task)

    def on_post_claim(self, req: falcon.Request, resp: falcon.Response) -> None:
        asked = wait_param(req, self._max_wait)
        with self._long_polls.wait(asked) as wait:
            task = self._store.claim(wait)
        if task is None and wait < asked:
            # No slot to wait in: an empty answer now would have the worker ask again at once,
            # over and over; a 503 has it back off (its claims' backoff) instead.
            raise falcon.HTTPServiceUnavailable(
                title="Too many waiting requests",
                description="Every long-poll slot is taken; ask again shortly.",
                headers={"Retry-After": "1"},
            )
        if task is None:
            resp.status = falcon.HTTP_204
            return
        resp.media = task_document(task, with_lease=True)

    def on_post_heartbeat(self, req: falcon.Request, resp: falcon.Response) -> None:
        task = self._store.heartbeat(require_task_id(req), _lease(req))
        resp.media = task_document(task, with_lease=True)

    def on_post_finish(self, req: falcon.Request, resp: falcon.Response) -> None:
        # What the task's status should tell (what of the image was skipped, kept or removed),
        # a ``note`` parameter each: /status lists them.
        notes = [_text(n)[:MAX_NOTE_LENGTH] for n in req.get_param_as_list("note") or []]
        notes = [note for note in notes if note][:MAX_NOTES]
        self._store.finish(require_task_id(req), _lease(req), notes)
        _success(resp)

    def on_post_fail(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        lease = req.get_param("lease")
        error = _text(req.get_param("error") or "")
        if not error:
            raise falcon.HTTPBadRequest(title="Missing error", description="say why it failed")
        retryable = req.get_param_as_bool("retry", default=False)
        task = self._store.fail(task_id, lease, error[:MAX_ERROR_LENGTH], retryable)
        resp.media = task_document(task)

    def on_post_release(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._store.release(require_task_id(req), _lease(req))
        _success(resp)

    def on_post_set(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The seed's ``/setById``, limited to the moves an operator may make."""
        body = req.get_media()
        if not isinstance(body, dict) or not isinstance(body.get("state"), int):
            raise falcon.HTTPBadRequest(
                title="Invalid task", description='expected JSON {"id": "...", "state": 0 or 3}'
            )
        task_id = str(body.get("id", ""))
        req.params["id"] = task_id
        require_task_id(req)
        actions = {
            TaskState.QUEUED.code: self._store.retry,
            TaskState.FAILED.code: self._store.cancel,
        }
        action = actions.get(body["state"])
        if action is None:
            raise falcon.HTTPConflict(
                title="State change not allowed",
                description="only 0 (retry a failed task) or 3 (cancel a waiting task) may be set",
            )
        action(task_id)
        _success(resp)

    def on_get_list(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=10_000, default=100)
        tasks = self._store.recent(limit)
        if req.client_accepts_json and not req.client_accepts("text/plain"):
            resp.media = [task_document(task) for task in tasks]
            return
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "".join(f"{t.id} {t.state.code} {t.state.value}\n" for t in tasks)


def _not_found(req: falcon.Request, resp: falcon.Response, ex: TaskNotFound, params: Any) -> None:
    raise falcon.HTTPNotFound(title="Unknown task", description="No task has this id.")


def _conflict(req: falcon.Request, resp: falcon.Response, ex: TaskConflict, params: Any) -> None:
    raise falcon.HTTPConflict(title="Task conflict", description=str(ex))


def _database_error(
    req: falcon.Request, resp: falcon.Response, ex: sqlite3.OperationalError, params: Any
) -> None:
    if "disk is full" in str(ex) or "disk I/O error" in str(ex):
        raise disk_full("database volume") from ex
    raise ex


def _unavailable(
    req: falcon.Request, resp: falcon.Response, ex: StoreUnavailable, params: Any
) -> None:
    # What failed (addresses included) is for the operator's log, not the caller.
    log.warning("task database unavailable", extra={"error": str(ex), "route": req.uri_template})
    raise falcon.HTTPServiceUnavailable(
        title="Database unavailable",
        description="The task database cannot be reached; try again shortly.",
        headers={"Retry-After": "1"},
    ) from ex


def create_app(config: Config, store: TaskStore) -> falcon.App:
    registry = CollectorRegistry()
    registry.register(QueueCollector(store))
    app = create_base_app(config, registry=registry)
    app.add_error_handler(sqlite3.OperationalError, _database_error)
    app.add_error_handler(StoreUnavailable, _unavailable)
    app.add_error_handler(TaskNotFound, _not_found)
    app.add_error_handler(TaskConflict, _conflict)
    # A waiting claim or task watch holds a server thread: bounded in time, and in number
    # whatever the number of masters and workers (half the threads, as the master's polls).
    long_polls = LongPolls(config.threads // 2)
    tasks = Tasks(store, max_wait=config.max_wait_seconds, long_polls=long_polls)
    routes = {
        "/newTask": "new",
        "/enqueueTask": "enqueue",
        "/getById": "by_id",
        "/getNewTask": "claim",
        "/heartbeat": "heartbeat",
        "/finishTask": "finish",
        "/failTask": "fail",
        "/releaseTask": "release",
        "/setById": "set",
        "/list": "list",
    }
    for path, suffix in routes.items():
        app.add_route(path, tasks, suffix=suffix)
    return app
