"""The database's HTTP API: the seed's routes plus leases, heartbeats and failures."""

from __future__ import annotations

import datetime
import logging
import math
import re
from typing import Any

import falcon
from prometheus_client import CollectorRegistry

from darkroom.contract.events import MAX_EVENT_NUMBER, Stage, parse_stages
from darkroom.contract.folders import result_version
from darkroom.contract.limits import (
    IDEMPOTENCY_KEY_DESCRIPTION,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_ERROR_LENGTH,
    MAX_PIPELINE_CHARS,
    SHA256_HEX_PATTERN,
)
from darkroom.contract.tasks import (
    IdempotencyKeyUsed,
    TaskState,
    waited_through,
)
from darkroom.contract.webhooks import (
    MAX_ATTEMPT_ERROR_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    Attempt,
    message_id,
    redacted_url,
)
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.ids import require_task_id
from darkroom.core.longpoll import LongPolls
from darkroom.core.params import state_param, wait_param
from darkroom.core.streams import client_departed
from darkroom.database.answers import (
    STORE_ERRORS,
    answer_for,
    kept_notes,
    kept_text,
    text_refusal,
)
from darkroom.database.metrics import QueueCollector
from darkroom.database.store import (
    Delivery,
    StoreUnavailable,
    Task,
    TaskEvent,
    TaskStore,
)

log = logging.getLogger(__name__)

FEED_EPOCH_PATTERN = re.compile(r"[0-9a-f]{16}")


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def task_document(
    task: Task, with_lease: bool = False, *, delivery: Delivery | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": task.id,
        "state": task.state.code,
        "stateName": task.state.value,
        "pipeline": task.pipeline,
        "attempts": task.attempts,
        "error": task.error,
        "notes": list(task.notes),
        "hasIdempotencyKey": task.idempotency_key is not None,
        "stage": task.stage,  # the stage reached: its last stage event's name
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
    if delivery is not None:
        document["webhook"] = webhook_document(delivery)
    return document


def webhook_document(delivery: Delivery) -> dict[str, Any]:
    """A delivery as /status shows it: never the secret, nor the URL's query string."""
    return {
        "url": redacted_url(delivery.url),
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "nextAttemptAt": _timestamp(delivery.due_at),
        "last": [
            {"at": _timestamp(a.at), "status": a.status, "error": a.error} for a in delivery.last
        ],
    }


def event_document(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.sequence,
        "kind": event.kind.value,
        "at": _timestamp(event.at),
        "data": event.data,
    }


def _stages(req: falcon.Request) -> tuple[Stage, ...]:
    """The worker's processing stages sent with a heartbeat, finish or fail (JSON ``stages``)."""
    try:
        return parse_stages(req.get_param("stages"))
    except ValueError as exc:
        raise falcon.HTTPInvalidParam(str(exc), "stages") from exc


def _no_wait_slot() -> falcon.HTTPServiceUnavailable:
    return falcon.HTTPServiceUnavailable(
        title="Too many waiting requests",
        description="Every long-poll slot is taken; ask again shortly.",
        headers={"Retry-After": "1"},
    )


def _lease(req: falcon.Request) -> str:
    return req.get_param("lease", required=True)


def _matching_param(
    req: falcon.Request, name: str, pattern: re.Pattern[str], description: str
) -> str | None:
    """The optional parameter ``name``, or 400 when it does not match ``pattern``."""
    value = req.get_param(name)
    if value is not None and pattern.fullmatch(value) is None:
        raise falcon.HTTPInvalidParam(f"The value must be {description}.", name)
    return value


def _kept_text(req: falcon.Request, name: str, title: str, limit: int) -> str | None:
    """The optional text parameter ``name`` as a store keeps it: 400 unless it is 1 to ``limit``
    characters with no NUL (which PostgreSQL's text cannot hold)."""
    value = req.get_param(name)
    if (refusal := text_refusal(value, name, limit)) is not None:
        raise falcon.HTTPBadRequest(title=title, description=refusal)
    return value


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
        pipeline = _kept_text(req, "pipeline", "Invalid pipeline", MAX_PIPELINE_CHARS) or "swap"
        webhook_url = _kept_text(req, "webhook", "Invalid webhook", MAX_WEBHOOK_URL_CHARS)
        key = _matching_param(
            req, "idempotencyKey", IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_DESCRIPTION
        )
        try:
            task = self._store.create(pipeline, webhook_url=webhook_url, idempotency_key=key)
        except IdempotencyKeyUsed as used:
            # Not an error: the master decides whether the upload is a replay or a misuse.
            resp.media = used.holder.to_document()
            return
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = task.id

    def on_post_enqueue(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        body_sha256 = _matching_param(
            req, "bodySha256", SHA256_HEX_PATTERN, "64 lowercase hex digits"
        )
        self._store.enqueue(task_id, body_sha256=body_sha256)
        _success(resp)

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = task_document(self._store.cancel(require_task_id(req)))

    def on_get_by_id(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A task; with ``wait``, long-polls until it leaves ``state`` (default: until it ends)."""
        task_id = require_task_id(req)
        with self._long_polls.wait(wait_param(req, self._max_wait)) as wait:
            if wait:
                task = self._store.watch(task_id, waited_through(state_param(req)), wait)
            else:
                task = self._store.get(task_id)
        resp.media = task_document(task, delivery=self._store.delivery(task_id))

    def on_post_claim(self, req: falcon.Request, resp: falcon.Response) -> None:
        asked = wait_param(req, self._max_wait)
        with self._long_polls.wait(asked) as wait:
            task = self._store.claim(wait, client_departed(req))
        if task is None and wait < asked:
            # No slot to wait in: an empty answer now would have the worker ask again at once,
            # over and over; a 503 has it back off (its claims' backoff) instead.
            raise _no_wait_slot()
        if task is None:
            resp.status = falcon.HTTP_204
            return
        resp.media = task_document(task, with_lease=True)

    def on_post_heartbeat(self, req: falcon.Request, resp: falcon.Response) -> None:
        task = self._store.heartbeat(require_task_id(req), _lease(req), stages=_stages(req))
        resp.media = task_document(task, with_lease=True)

    def on_post_finish(self, req: falcon.Request, resp: falcon.Response) -> None:
        # What the task's status should tell (what of the image was skipped, kept or removed),
        # a ``note`` parameter each: /status lists them.
        notes = kept_notes(req.get_param_as_list("note") or [])
        self._store.finish(require_task_id(req), _lease(req), notes, stages=_stages(req))
        _success(resp)

    def on_post_fail(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        lease = req.get_param("lease")
        error = kept_text(req.get_param("error") or "")
        if not error:
            raise falcon.HTTPBadRequest(title="Missing error", description="say why it failed")
        retryable = req.get_param_as_bool("retry", default=False)
        task = self._store.fail(
            task_id, lease, error[:MAX_ERROR_LENGTH], retryable, stages=_stages(req)
        )
        resp.media = task_document(task)

    def on_post_release(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._store.release(require_task_id(req), _lease(req))
        _success(resp)

    def on_post_set(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The seed's ``/setById``, limited to the moves an operator may make: 0 retries a failed
        task, 3 fails a waiting one (as in the seed), 4 cancels one that has not ended."""
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
            TaskState.FAILED.code: self._fail_waiting,
            TaskState.CANCELLED.code: self._store.cancel,
        }
        action = actions.get(body["state"])
        if action is None:
            raise falcon.HTTPConflict(
                title="State change not allowed",
                description="only 0 (retry a failed task), 3 (fail a waiting task)"
                " or 4 (cancel a task that has not ended) may be set",
            )
        action(task_id)
        _success(resp)

    def _fail_waiting(self, task_id: str) -> Task:
        return self._store.fail(task_id, None, "failed by an operator", retryable=False)

    def on_get_events(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A task's events after number ``after``; with ``wait``, long-polls until there is one."""
        task_id = require_task_id(req)
        after = req.get_param_as_int("after", min_value=0, max_value=MAX_EVENT_NUMBER, default=0)
        asked = wait_param(req, self._max_wait)
        with self._long_polls.wait(asked) as wait:
            events = self._store.events(task_id, after, wait)
        if not events and wait < asked:
            raise _no_wait_slot()  # as a claim: an empty answer would be asked again at once
        resp.media = [event_document(event) for event in events]

    def on_get_ended(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The feed of ended tasks after position ``after`` of ``epoch`` (none: where it is
        now); with ``wait``, long-polls until there is one. A master follows it."""
        epoch = _matching_param(req, "epoch", FEED_EPOCH_PATTERN, "16 lowercase hex digits")
        after = req.get_param_as_int("after", min_value=0, max_value=MAX_EVENT_NUMBER, default=0)
        asked = wait_param(req, self._max_wait)
        with self._long_polls.wait(asked) as wait:
            ended = self._store.ended(epoch, after, wait)
        if not ended.ended and not ended.reset and wait < asked:
            raise _no_wait_slot()
        resp.media = ended.to_document()

    def on_get_list(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=10_000, default=100)
        tasks = self._store.recent(limit)
        if req.client_accepts_json and not req.client_accepts("text/plain"):
            resp.media = [task_document(task) for task in tasks]
            return
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "".join(f"{t.id} {t.state.code} {t.state.value}\n" for t in tasks)


# A retry further off than this is a caller's mistake (the retry period is a day by default).
MAX_RETRY_IN_SECONDS = 366 * 24 * 3600.0


class Deliveries:
    """The webhook routes the masters use: claim a due delivery, report an attempt."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store

    def on_post_claim(self, req: falcon.Request, resp: falcon.Response) -> None:
        lease_seconds = _number(req, "lease_seconds", required=True, min_value=1, max_value=3600)
        delivery = self._store.claim_delivery(lease_seconds)
        if delivery is None:
            resp.status = falcon.HTTP_204
            return
        assert delivery.ended_at is not None  # a due delivery is one of an ended job
        task = self._store.get(delivery.task_id)
        resp.media = {
            "id": delivery.task_id,
            "url": delivery.url,
            "lease": delivery.lease_token,
            "attempts": delivery.attempts,
            "messageId": message_id(delivery.task_id, delivery.sequence),
            "endedAt": delivery.ended_at,
            "task": task_document(task),
        }

    def on_post_report(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        lease = _lease(req)
        status = req.get_param_as_int("status", min_value=100, max_value=599)
        error = (req.get_param("error") or "").strip()[:MAX_ATTEMPT_ERROR_CHARS] or None
        if (status is None) == (error is None):
            raise falcon.HTTPBadRequest(
                title="Invalid attempt", description="give the answer's status or an error"
            )
        retry_in = _number(req, "retry_in", min_value=0, max_value=MAX_RETRY_IN_SECONDS)
        at = _number(req, "at", required=True, min_value=0, max_value=MAX_RETRY_IN_SECONDS**2)
        attempt = Attempt(at, status, error)
        delivery = self._store.report_delivery(task_id, lease, attempt, retry_in)
        resp.media = webhook_document(delivery)


def _number(req: falcon.Request, name: str, **bounds: Any) -> float | None:
    """A float parameter within ``bounds``; NaN refused (it passes every bound, and SQLite
    would store it as NULL)."""
    value = req.get_param_as_float(name, **bounds)
    if value is not None and math.isnan(value):
        raise falcon.HTTPInvalidParam("The value must be a number.", name)
    return value


def _store_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    """A refusal of the store, as its answer (``darkroom.database.answers``)."""
    answer = answer_for(ex)
    if answer is None:
        raise ex
    if isinstance(ex, StoreUnavailable):
        log.warning(
            "task database unavailable", extra={"error": str(ex), "route": req.uri_template}
        )
    headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    raise falcon.HTTPError(
        falcon.code_to_http_status(answer.status),
        title=answer.title,
        description=answer.description,
        headers=headers,
    ) from ex


def create_app(config: Config, store: TaskStore) -> falcon.App:
    registry = CollectorRegistry()
    registry.register(QueueCollector(store))
    app = create_base_app(config, registry=registry)
    app.add_error_handler(STORE_ERRORS, _store_error)
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
        "/cancelTask": "cancel",
        "/list": "list",
        "/events": "events",
        "/endedTasks": "ended",
    }
    for path, suffix in routes.items():
        app.add_route(path, tasks, suffix=suffix)
    deliveries = Deliveries(store)
    app.add_route("/claimDelivery", deliveries, suffix="claim")
    app.add_route("/reportDelivery", deliveries, suffix="report")
    return app
