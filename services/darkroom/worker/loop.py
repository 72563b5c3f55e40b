"""One task loop: claim, download, process, upload, finish; never dies of a bad task."""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

from darkroom.contract.errors import ServiceError, ServiceNotFound, ServiceUnavailable
from darkroom.contract.folders import Folder, result_version
from darkroom.contract.tasks import TASK_CANCELLED_TITLE, Claim
from darkroom.core import requestid
from darkroom.core.backoff import Backoff
from darkroom.core.leases import LeaseLost, TaskLeases, TaskWasCancelled
from darkroom.core.streams import iter_chunks
from darkroom.core.transport import Response
from darkroom.storage.client import StorageClient
from darkroom.worker.metrics import Outcome, TaskMetrics
from darkroom.worker.stages import StageDone, StageLog

log = logging.getLogger(__name__)

# Images up to this size are processed in memory; larger ones spill to temporary files.
SPOOL_BYTES = 8 * 1024 * 1024

# A full storage volume is waited out this long (the lease kept, no attempt spent) before the
# task fails: space is usually freed (retention, an operator) long before.
DISK_FULL_DEADLINE_SECONDS = 300.0
DISK_FULL = 507  # the storage's answer when its volume has no space left


class Processor(Protocol):
    """Turns ``source`` into ``destination`` with ``pipeline``: the media type, or a Processed
    when there are notes; raises the loop's ``rejected`` for a bad image. Tells ``stage_done``
    of each stage (decode, each step, encode) as it ends."""

    def __call__(
        self, source: BinaryIO, destination: BinaryIO, pipeline: str, *, stage_done: StageDone
    ) -> str | Processed: ...


@dataclass(frozen=True)
class Processed:
    """A processor's result with notes for the job's status (what of the image was skipped,
    kept or removed)."""

    media_type: str
    notes: tuple[str, ...] = ()


_T = TypeVar("_T")


class ImageGone(Exception):
    """The task's uploaded image no longer exists: retrying cannot help."""


class StorageFull(Exception):
    """The storage stayed full past the deadline: the task fails, saying so."""


class TaskLoop:
    def __init__(
        self,
        tasks: TaskLeases,
        storage: StorageClient,
        process: Processor,
        rejected: type[Exception],
        claim_wait_seconds: float,
        lease_seconds: float,
        http_timeout: float,
        stop: threading.Event,
        metrics: TaskMetrics | None = None,
        disk_full_deadline: float = DISK_FULL_DEADLINE_SECONDS,
    ) -> None:
        self._tasks = tasks
        self._disk_full_deadline = disk_full_deadline
        self._metrics = metrics or TaskMetrics()
        self._storage = storage
        self._process = process
        self._rejected = rejected
        self._claim_wait = claim_wait_seconds
        self._heartbeat_every = max(lease_seconds / 3, 0.05)
        self._http_timeout = http_timeout
        self._stop = stop
        self.completed = 0
        self.failed = 0
        # Waits between tasks given back because a service they need is down.
        self._outage = Backoff(first=0.5, cap=5.0)
        # Claims being processed or stored, by task id: what a stopping worker gives back.
        self._held: dict[str, Claim] = {}
        # Their stages so far, by task id: sent with the heartbeats, the finish or the fail.
        self._stages: dict[str, StageLog] = {}
        self._held_lock = threading.Lock()

    def run(self) -> None:
        with self._metrics.running():
            self._run()

    def _run(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        with _Finisher() as finisher:
            while not self._stop.is_set():
                try:
                    claim = self._tasks.claim(self._claim_wait, self._http_timeout)
                except Exception as exc:
                    delay = backoff.next()
                    log.warning("claim failed", extra={"error": str(exc), "retry_in": delay})
                    self._stop.wait(delay)
                    continue
                backoff.reset()
                if claim is None:
                    continue
                if self._stop.is_set():
                    self._give_back(claim)
                    return
                self.handle(claim, finisher)

    def handle(self, claim: Claim, finisher: _Finisher | None = None) -> None:
        """Process one claimed task; every outcome is reported to the database.

        With ``finisher``, storing the result and reporting it run there, in the background,
        while this loop claims and processes the next task: the CPU does not wait for the
        network. Without it, the task is done when this returns. The task id is the request id
        meanwhile: it is on every log line and downstream call.
        """
        token = requestid.current.set(claim.task_id)
        try:
            log.info("task claimed", extra={"task": claim.task_id, "attempt": claim.attempts})
            self._hold(claim)
            heartbeat = _Heartbeat(
                self._tasks, claim, self._heartbeat_every, self._stages_of(claim)
            )
            heartbeat.start()
            # Busy: the loop's time on the task, up to handing its result over (storing it
            # overlaps the next task, but waiting for the previous one to be stored counts).
            with self._metrics.busy():
                images = self._run_step(
                    claim,
                    functools.partial(self._download_and_process, cancelled=heartbeat.cancelled),
                )
                if images is not None and heartbeat.cancelled.is_set():
                    # Cancelled while it was processed: the result is never sent.
                    images.close()
                    images = None
                    self._cancelled(claim)
                if images is None:
                    heartbeat.stop()
                    self._let_go(claim)
                    return
                finish = functools.partial(self._finish, claim, images, heartbeat)
                if finisher is None:
                    finish()
                else:
                    finisher.run(contextvars.copy_context().run, finish)
        finally:
            requestid.current.reset(token)

    def _finish(self, claim: Claim, images: _TaskImages, heartbeat: _Heartbeat) -> None:
        try:
            # Not given back by a stopping worker, nor cancelled by its client, meanwhile.
            if self._holds(claim) and not heartbeat.cancelled.is_set():
                self._run_step(claim, functools.partial(self._store_result, images=images))
        finally:
            images.close()
            heartbeat.stop()
            self._let_go(claim)

    def _hold(self, claim: Claim) -> None:
        with self._held_lock:
            self._held[claim.task_id] = claim
            self._stages[claim.task_id] = StageLog()

    def _stages_of(self, claim: Claim) -> StageLog:
        with self._held_lock:
            return self._stages.get(claim.task_id) or StageLog()

    def _holds(self, claim: Claim) -> bool:
        with self._held_lock:
            return claim.task_id in self._held

    def _let_go(self, claim: Claim) -> None:
        with self._held_lock:
            self._held.pop(claim.task_id, None)
            self._stages.pop(claim.task_id, None)

    def give_back_held(self) -> int:
        """Give back every task this loop holds, unspent: its worker stops before they are done.

        Called from another thread once the drain time is over; how many were given back.
        """
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for claim in held:
            log.info("worker stopping; task given back", extra={"task": claim.task_id})
            self._give_back(claim)
        return len(held)

    def _run_step(self, claim: Claim, step: Callable[[Claim], _T]) -> _T | None:
        """Run one step of a task; a failure is reported (or waited out) and gives None."""
        try:
            return step(claim)
        except TaskWasCancelled:
            self._cancelled(claim)
        except LeaseLost:
            self._metrics.outcome(Outcome.LEASE_LOST)
            log.warning("lease lost; another worker has the task", extra={"task": claim.task_id})
        except (self._rejected, ImageGone, StorageFull) as exc:
            self.failed += 1
            self._metrics.outcome(Outcome.FAILED)
            self._report_failure(claim, str(exc), retryable=False)
        except ServiceUnavailable as exc:
            # A service is down or restarting (also when it could not be reached at all).
            self._metrics.outcome(Outcome.ERROR)
            self._wait_out_outage(claim, exc)
        except Exception as exc:
            self._metrics.outcome(Outcome.ERROR)
            log.exception("task error", extra={"task": claim.task_id})
            reason = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
            self._report_failure(claim, reason, retryable=True)
        return None

    def _cancelled(self, claim: Claim) -> None:
        """Its client cancelled the task: not a failure, nothing to report."""
        self._metrics.outcome(Outcome.CANCELLED)
        log.info("task cancelled by its client; stopped", extra={"task": claim.task_id})

    def _download_and_process(self, claim: Claim, cancelled: threading.Event) -> _TaskImages:
        """The task's image downloaded and processed; TaskWasCancelled at the end of the first
        stage after a heartbeat learned the task was cancelled (the next steps are not run)."""
        images = _TaskImages()
        stages = self._stages_of(claim)

        def stage_done(name: str, started: float, ended: float) -> None:
            stages.add(name, started, ended)
            if cancelled.is_set():
                raise TaskWasCancelled(
                    "database", 409, TASK_CANCELLED_TITLE, "cancelled while it was processed"
                )

        try:
            download_started = time.perf_counter()
            try:
                download = self._storage.open(Folder.WORKING, claim.task_id)
            except ServiceNotFound as exc:
                # Claimable tasks always have their image, so it was expired or deleted since.
                raise ImageGone("the uploaded image is gone (expired or deleted)") from exc
            with download:
                _copy_body(download, images.source)
            downloaded = time.perf_counter()
            self._metrics.observe("download", downloaded - download_started)
            stages.add("download", download_started, downloaded)
            images.source.seek(0)
            processed = self._process(
                images.source, images.result, claim.pipeline, stage_done=stage_done
            )
            if isinstance(processed, Processed):
                images.media_type, images.notes = processed.media_type, processed.notes
            else:
                images.media_type = processed
        except BaseException:
            images.close()
            raise
        return images

    def _store_result(self, claim: Claim, images: _TaskImages) -> None:
        stages = self._stages_of(claim)
        store_started = time.perf_counter()
        self._send_result(claim, images.result)
        stored = time.perf_counter()
        self._metrics.observe("upload", stored - store_started)
        stages.add("store", store_started, stored)
        try:
            self._tasks.finish(claim, images.notes, stages=stages.take_new())
        except TaskWasCancelled:
            # Cancelled since the last heartbeat: the stored file is never served (the task
            # is not finished), and removing it frees its space before the retention would.
            self._remove_result(claim)
            raise
        self.completed += 1
        self._outage.reset()
        self._metrics.outcome(Outcome.DONE)
        log.info("task finished", extra={"task": claim.task_id, "media_type": images.media_type})

    def _send_result(self, claim: Claim, result: BinaryIO) -> None:
        """Store the result; a full storage is waited out, holding the lease (the heartbeat
        goes on), until the deadline: a temporary full disk is an outage, not the task's fault.
        """
        size = result.tell()
        version = result_version(claim.lease)  # the finish after it decides if it is the one
        deadline = time.monotonic() + self._disk_full_deadline
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            result.seek(0)
            try:
                self._storage.send(
                    Folder.FINISHED, claim.task_id, iter_chunks(result), size, version
                )
                return
            except ServiceError as exc:
                if exc.status != DISK_FULL:
                    raise
                if self._stop.is_set():  # stopping: give the task back unspent
                    raise ServiceUnavailable(
                        exc.service, exc.status, exc.title, exc.description
                    ) from exc
                delay = min(backoff.next(), deadline - time.monotonic())
                if delay <= 0:
                    raise StorageFull(
                        f"the storage stayed full for {self._disk_full_deadline:g} s:"
                        f" {exc.description}"
                    ) from exc
                log.warning(
                    "storage full; result kept, storing again",
                    extra={"task": claim.task_id, "retry_in": round(delay, 2)},
                )
                self._stop.wait(delay)

    def _remove_result(self, claim: Claim) -> None:
        try:
            self._storage.delete(Folder.FINISHED, claim.task_id, result_version(claim.lease))
        except Exception as exc:
            # The retention removes it in time; it is never served meanwhile.
            log.warning(
                "could not remove a cancelled task's result",
                extra={"task": claim.task_id, "error": str(exc)},
            )

    def _report_failure(self, claim: Claim, error: str, retryable: bool) -> None:
        log.warning(
            "task failed", extra={"task": claim.task_id, "error": error, "retryable": retryable}
        )
        try:
            self._tasks.fail(claim, error, retryable, stages=self._stages_of(claim).take_new())
        except Exception as exc:
            # The lease will expire and the task will be retried: nothing is lost.
            log.warning(
                "could not report failure", extra={"task": claim.task_id, "error": str(exc)}
            )

    def _wait_out_outage(self, claim: Claim, exc: ServiceUnavailable) -> None:
        """Not the task's fault: give it back without spending an attempt, then wait a little.

        Failing it instead would spend all its attempts in a second of storage restart.
        """
        delay = self._outage.next()
        log.warning(
            "service unavailable; task given back",
            extra={
                "task": claim.task_id,
                "error": getattr(exc, "detail", exc.description),
                "retry_in": delay,
            },
        )
        self._give_back(claim)
        self._stop.wait(delay)

    def _give_back(self, claim: Claim) -> None:
        try:
            self._tasks.release(claim)
        except Exception as exc:
            log.warning("could not release task", extra={"task": claim.task_id, "error": str(exc)})


def _copy_body(response: Response, target: BinaryIO) -> None:
    """Copy a streamed body, in one read when it fits in memory (256 KiB writes cost ~10 ms)."""
    length = response.headers.get("Content-Length", "")
    chunk_size = min(int(length), SPOOL_BYTES) if length.isdigit() and length != "0" else 256 * 1024
    for chunk in response.stream(chunk_size):
        target.write(chunk)


class _Heartbeat:
    """Extends the lease in the background while a task is processed."""

    def __init__(self, tasks: TaskLeases, claim: Claim, every: float, stages: StageLog) -> None:
        self._tasks, self._claim, self._every = tasks, claim, every
        self._stages = stages
        self._done = threading.Event()
        # Set when a heartbeat learns that the task's client cancelled it.
        self.cancelled = threading.Event()
        # In the caller's context, so heartbeats carry the task's request id.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), daemon=True, name="heartbeat"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                # A heartbeat that fails loses the stages it carried: progress, not the result.
                self._tasks.heartbeat(self._claim, stages=self._stages.take_new())
            except TaskWasCancelled:
                self.cancelled.set()
                return
            except LeaseLost:
                return
            except Exception as exc:
                log.warning(
                    "heartbeat failed", extra={"task": self._claim.task_id, "error": str(exc)}
                )


class _TaskImages:
    """A task's image and its result, in memory or spilled to disk, until the result is stored."""

    def __init__(self) -> None:
        # Closed by close(), which may run in another thread once the result is stored.
        self.source = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115
        self.result = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115
        self.media_type = ""
        self.notes: tuple[str, ...] = ()

    def close(self) -> None:
        self.source.close()
        self.result.close()


class _Finisher:
    """One background thread that finishes the previous task (stores its result, reports it).

    ``run`` first waits for the step before: at most one result waits to be stored, so memory
    stays bounded, and a slow storage slows the loop down instead of piling up results.
    Leaving the ``with`` block waits for the last step, so a stopping loop loses nothing.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-result")
        self._pending: concurrent.futures.Future[Any] | None = None

    def run(self, step: Callable[..., Any], *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(step, *args)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def __enter__(self) -> _Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()
