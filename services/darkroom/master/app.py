"""The master's HTTP API: the seed's routes for clients and workers, plus ``/status``."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import falcon
from prometheus_client import CollectorRegistry

from darkroom.contract.errors import ServiceConflict
from darkroom.contract.folders import Folder, result_version
from darkroom.contract.limits import IDEMPOTENCY_KEY_DESCRIPTION, IDEMPOTENCY_KEY_PATTERN
from darkroom.contract.tasks import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED_HEADER,
    IdempotencyKeyUsed,
    KeyHolder,
    TaskState,
)
from darkroom.core.app import create_base_app
from darkroom.core.auth import CLIENT
from darkroom.core.config import Config
from darkroom.core.ids import require_task_id
from darkroom.core.imagetypes import EXTENSIONS, SNIFF_BYTES, sniff_media_type
from darkroom.core.longpoll import LongPolls
from darkroom.core.params import single_param, state_param, wait_param
from darkroom.core.relay import relay, relay_stream
from darkroom.core.ssrf import InvalidTarget, RefusedTarget
from darkroom.core.streams import client_departed, iter_chunks
from darkroom.database.client import DatabaseClient
from darkroom.master.events import EventStreamPolicy, EventStreams
from darkroom.master.finished import FinishedTasks
from darkroom.master.openapi import OpenApiDocument
from darkroom.master.unfinished import UnfinishedTasks
from darkroom.master.webhooks import WebhookGuard, WebhookSettings
from darkroom.storage.client import Storage

log = logging.getLogger(__name__)

# Turns the ``op`` text of an upload into its canonical form, or raises ValueError saying why.
PipelineCheck = Callable[[str | None], str]

SUPPORTED = ", ".join(sorted(EXTENSIONS.values()))


def _read_head(stream: BinaryIO) -> bytes:
    """The first bytes of the body, enough to recognise the format (reads may come short)."""
    head = b""
    while len(head) < SNIFF_BYTES and (chunk := stream.read(SNIFF_BYTES - len(head))):
        head += chunk
    return head


class Jobs:
    """The client API: upload, ask, download."""

    auth = CLIENT

    def __init__(
        self,
        database: DatabaseClient,
        storage: Storage,
        check_pipeline: PipelineCheck,
        config: Config,
        finished: FinishedTasks,
        *,
        webhooks: WebhookGuard | None = None,
        unfinished: UnfinishedTasks | None = None,
    ) -> None:
        self._database = database
        self._unfinished = unfinished
        self._webhooks = webhooks or WebhookGuard(config.settings_for(WebhookSettings))
        self._finished = finished
        self._storage = storage
        self._check_pipeline = check_pipeline
        self._max_upload_bytes = config.max_upload_bytes
        self._long_polls = LongPolls(config.threads // 2)
        self._max_wait = config.max_wait_seconds

    def on_post_new(self, req: falcon.Request, resp: falcon.Response) -> None:
        if (req.content_length or 0) > self._max_upload_bytes:
            raise falcon.HTTPContentTooLarge(
                title="Image too large",
                description=f"Images may be at most {self._max_upload_bytes} bytes.",
            )
        try:
            pipeline = self._check_pipeline(single_param(req, "op"))
        except ValueError as exc:
            raise falcon.HTTPBadRequest(title="Invalid operation", description=str(exc)) from exc
        webhook_url = self._webhook_param(req)
        key = _idempotency_key(req)
        stream = req.bounded_stream
        head = _read_head(stream)
        if not head:
            raise falcon.HTTPBadRequest(
                title="Empty upload", description="Send the image as the request body."
            )
        if sniff_media_type(head) is None:
            raise falcon.HTTPUnsupportedMediaType(
                title="Not a supported image",
                description=f"The body is not an image in a supported format ({SUPPORTED}).",
            )
        # The task first (uploading), then its image, then the task queued: a task never waits
        # for an image it has not got, and an image is never without a task tying it to the
        # retention (the chaos test checks for such orphans). Storing the image first and then
        # creating the task queued saves a call but leaves an orphan when the master dies in
        # between: measured and given up (docs/benchmarks.md).
        body = itertools.chain([head], iter_chunks(stream))
        mark = self._unfinished.mark() if self._unfinished is not None else None
        try:
            task_id = self._database.create(pipeline, webhook_url=webhook_url, idempotency_key=key)
        except IdempotencyKeyUsed as used:
            self._replay(used.holder, pipeline, body, resp)
            return
        # An idempotency key remembers the body by its hash, taken as it streams to storage.
        fingerprint = _Fingerprint() if key else None
        try:
            sent = body if fingerprint is None else fingerprint.passing(body)
            self._storage.send(Folder.WORKING, task_id, sent, size=req.content_length)
        except Exception as exc:
            # Leave no half-made task behind (its key freed); the client gets the storage's error.
            self._abandon(task_id, exc)
            raise
        body_sha256 = None if fingerprint is None else fingerprint.hexdigest()
        self._database.enqueue(task_id, body_sha256=body_sha256)
        if self._unfinished is not None:
            self._unfinished.remember(task_id, mark)  # its first polls need no read
        # The worker logs under the task id: this line links the upload's request id to it.
        log.info("job queued", extra={"task": task_id, "pipeline": pipeline})
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = task_id

    def _webhook_param(self, req: falcon.Request) -> str | None:
        """``webhook``: the URL the job's status is POSTed to when it ends, checked now (and
        again at every attempt): 400 when it is malformed or webhooks are off, 422 when it is
        refused (it does not resolve, or resolves to an internal address)."""
        url = single_param(req, "webhook")
        if url is None:
            return None
        if not self._webhooks.enabled:
            raise falcon.HTTPBadRequest(
                title="Webhooks are off",
                description="This server has no webhook secret (DARKROOM_WEBHOOK_SECRET) to"
                " sign webhooks with, so it takes none; upload without webhook=.",
            )
        try:
            self._webhooks.check(url)
        except InvalidTarget as exc:
            raise falcon.HTTPInvalidParam(str(exc), "webhook") from exc
        except RefusedTarget as exc:
            raise falcon.HTTPUnprocessableEntity(
                title="Webhook refused", description=str(exc)
            ) from exc
        return url

    def _replay(
        self, holder: KeyHolder, pipeline: str, body: Iterable[bytes], resp: falcon.Response
    ) -> None:
        """A second upload with a kept Idempotency-Key: its job again when it is the same
        upload (same op, same body), else refused. Its body is only hashed, never stored."""
        if holder.pipeline != pipeline:
            raise falcon.HTTPUnprocessableEntity(
                title="Idempotency key reused",
                description="This Idempotency-Key was used for an upload with a different op;"
                " use a new key for a different job.",
            )
        if holder.body_sha256 is None:
            raise falcon.HTTPConflict(
                title="Upload in progress",
                description="The first upload with this Idempotency-Key is still in progress;"
                " send it again once that one has ended.",
                headers={"Retry-After": "1"},
            )
        fingerprint = _Fingerprint()
        size = 0
        for chunk in fingerprint.passing(body):
            size += len(chunk)
            if size > self._max_upload_bytes:
                raise falcon.HTTPContentTooLarge(
                    title="Image too large",
                    description=f"Images may be at most {self._max_upload_bytes} bytes.",
                )
        if fingerprint.hexdigest() != holder.body_sha256:
            raise falcon.HTTPUnprocessableEntity(
                title="Idempotency key reused",
                description="This Idempotency-Key was used for an upload with a different body;"
                " use a new key for a different image.",
            )
        log.info("upload replayed", extra={"task": holder.task_id})
        resp.set_header(REPLAYED_HEADER, "true")
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = holder.task_id

    def _abandon(self, task_id: str, cause: Exception) -> None:
        reason = getattr(cause, "description", None) or type(cause).__name__
        # The upload error is the one to report; the database also fails stale uploads itself.
        with contextlib.suppress(Exception):
            self._database.abandon_upload(task_id, f"upload failed: {reason}")

    def _task(self, req: falcon.Request, state: str | None = None) -> dict[str, Any]:
        return self._read(require_task_id(req), wait_param(req, self._max_wait), state)

    def _read(self, task_id: str, wait: float = 0.0, state: str | None = None) -> dict[str, Any]:
        with self._long_polls.wait(wait) as wait:
            task = self._database.get(task_id, wait, state)
        if task["stateName"] == TaskState.FINISHED:
            # The database and the storage remove old jobs each on its own timer: a finished
            # job whose result is gone is gone, for every route alike. A result stored moments
            # ago cannot be gone yet: no exchange to ask.
            if not self._finished.finished_just_now(task) and not self._storage.exists(
                Folder.FINISHED, task_id, task.get("result")
            ):
                raise falcon.HTTPNotFound(title="Unknown task", description="No task has this id.")
            self._finished.seen(task)
        return task

    def on_get_is_ready(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        resp.content_type = falcon.MEDIA_TEXT
        wait = wait_param(req, self._max_wait)
        resp.text = "1" if self._is_ready(task_id, wait, client_departed(req)) else "0"

    def _is_ready(self, task_id: str, wait: float, departed: Callable[[], bool]) -> bool:
        """Whether the job is finished (waiting up to ``wait`` for it to end); 422 or 410 for
        a failed or cancelled one. From memory while the job is known to be running."""
        if self._finished.version(task_id)[0]:
            return True
        unfinished = self._unfinished
        if unfinished is not None and unfinished.following:
            if not unfinished.still_running(task_id):
                mark = unfinished.mark()
                task = self._read(task_id)
                if TaskState(task["stateName"]).ended:
                    return _finished(task)
                unfinished.remember(task_id, mark)
            with self._long_polls.wait(wait) as held:
                if unfinished.still_running(task_id, held, departed):
                    return False
            if self._finished.version(task_id)[0]:  # the feed told it finished
                return True
            wait = 0.0  # waited already: what it is now
        return _finished(self._read(task_id, wait))

    def on_get_status(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = state_param(req)
        task = self._task(req, None if state is None else state.value)
        task.pop("result", None)  # the storage's name for it, of no use to a client
        resp.media = task

    def on_get_result(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        known, version = self._finished.version(task_id)
        if not known:
            version = self._finished_task(req).get("result")
        upstream = self._storage.open(Folder.FINISHED, task_id, version)
        relay_stream(upstream, resp)
        extension = EXTENSIONS.get(resp.content_type or "", "bin")
        resp.downloadable_as = f"darkroom-{task_id}.{extension}"

    def _finished_task(self, req: falcon.Request) -> dict[str, Any]:
        task = self._task(req)
        _raise_if_failed_or_cancelled(task)
        if task["stateName"] != TaskState.FINISHED:
            raise falcon.HTTPConflict(
                title="Not finished",
                description=f"The job is {task['stateName']}; ask /isReady until it answers 1.",
                headers={"Retry-After": "1"},
            )
        return task

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Cancel a job that has not ended; its status. Cancelling it again changes nothing."""
        task_id = require_task_id(req)
        try:
            task = self._database.cancel(task_id)
        except ServiceConflict as exc:
            raise falcon.HTTPConflict(title="Job has ended", description=exc.description) from exc
        task.pop("result", None)
        resp.media = task


def _finished(task: dict[str, Any]) -> bool:
    """Whether the job is finished; 422 when it failed, 410 when it was cancelled."""
    _raise_if_failed_or_cancelled(task)
    return task["stateName"] == TaskState.FINISHED


def _raise_if_failed_or_cancelled(task: dict[str, Any]) -> None:
    """The job will never have a result: 422 when it failed, 410 when it was cancelled."""
    if task["stateName"] == TaskState.FAILED:
        raise falcon.HTTPUnprocessableEntity(
            title="Job failed", description=f"The job failed: {task['error']}"
        )
    if task["stateName"] == TaskState.CANCELLED:
        raise falcon.HTTPGone(
            title="Job cancelled", description="The job was cancelled; it has no result."
        )


def _idempotency_key(req: falcon.Request) -> str | None:
    """The upload's Idempotency-Key header (None without one), or 400 when it is malformed."""
    key = req.get_header(IDEMPOTENCY_KEY_HEADER)
    if key is not None and IDEMPOTENCY_KEY_PATTERN.fullmatch(key) is None:
        raise falcon.HTTPBadRequest(
            title="Invalid Idempotency-Key",
            description=f"The {IDEMPOTENCY_KEY_HEADER} header must be"
            f" {IDEMPOTENCY_KEY_DESCRIPTION}.",
        )
    return key


class _Fingerprint:
    """The SHA-256 of a body, taken chunk by chunk as it streams past."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class WorkerApi:
    """The seed's worker routes, for seed-style workers (Darkroom's own make the same calls at
    the database: ``darkroom.core.leases``); each relays the database's answer with its real
    status."""

    def __init__(self, database: DatabaseClient, config: Config, finished: FinishedTasks) -> None:
        self._database = database
        self._finished = finished
        self._claim_timeout = config.http_timeout_seconds
        self._max_wait = config.max_wait_seconds

    def _relay(self, req: falcon.Request, resp: falcon.Response, path: str, **kwargs: Any) -> None:
        relay(self._database.call("POST", path, params=req.params, **kwargs), resp, "database")

    def on_post_claim(self, req: falcon.Request, resp: falcon.Response) -> None:
        wait = wait_param(req, self._max_wait)
        self._relay(req, resp, "/getNewTask", timeout=wait + self._claim_timeout)

    def on_post_finish(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        self._relay(req, resp, "/finishTask")
        # The relay raised unless the database finished it under this lease.
        self._finished.just_finished(task_id, result_version(req.get_param("lease", required=True)))

    def on_post_heartbeat(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_task_id(req)
        self._relay(req, resp, "/heartbeat")

    def on_post_fail(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_task_id(req)
        req.get_param("lease", required=True)  # workers fail only what they hold
        self._relay(req, resp, "/failTask")

    def on_post_release(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_task_id(req)
        self._relay(req, resp, "/releaseTask")


def create_app(
    config: Config,
    database: DatabaseClient,
    storage: Storage,
    check_pipeline: PipelineCheck,
    readiness: list[Callable[[], str | None]] | None = None,
    *,
    webhooks: WebhookGuard | None = None,
    event_streams: EventStreamPolicy | None = None,
    finished: FinishedTasks | None = None,
    unfinished: UnfinishedTasks | None = None,
    registry: CollectorRegistry | None = None,
) -> falcon.App:
    """The master's app; ``unfinished`` (which shares ``finished``) answers the polls of jobs
    still running from memory, without it each poll reads the database. ``registry`` is what
    its ``/metrics`` serves (the delivery loops' figures are in it too)."""
    app = create_base_app(config, readiness=readiness or [], registry=registry)
    finished = finished or FinishedTasks(config.retention_seconds)
    jobs = Jobs(
        database,
        storage,
        check_pipeline,
        config,
        finished,
        webhooks=webhooks,
        unfinished=unfinished,
    )
    app.add_route("/openapi.json", OpenApiDocument())
    app.add_route("/new", jobs, suffix="new")
    app.add_route("/isReady", jobs, suffix="is_ready")
    app.add_route("/status", jobs, suffix="status")
    app.add_route("/get", jobs, suffix="result")
    app.add_route("/cancel", jobs, suffix="cancel")
    streams = EventStreams(database, event_streams or EventStreamPolicy(), config.threads)
    app.add_route("/events", streams)
    workers = WorkerApi(database, config, finished)
    app.add_route("/getNewTask", workers, suffix="claim")
    app.add_route("/registerTaskFinished", workers, suffix="finish")
    app.add_route("/heartbeat", workers, suffix="heartbeat")
    app.add_route("/failTask", workers, suffix="fail")
    app.add_route("/releaseTask", workers, suffix="release")
    return app
