"""One task loop: claim, download, process, upload, finish; never dies of a bad task."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import io
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, TypeVar

from darkroom.contract.errors import ServiceError, ServiceNotFound, ServiceUnavailable
from darkroom.contract.folders import Folder, result_version
from darkroom.contract.tasks import TASK_CANCELLED_TITLE, Claim
from darkroom.core import requestid
from darkroom.core.backoff import Backoff
from darkroom.core.imagefiles import FileAnswer, ImageAnswer
from darkroom.core.leases import LeaseLost, TaskLeases, TaskWasCancelled
from darkroom.core.streams import iter_chunks
from darkroom.storage.client import Storage
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
    """Claims tasks and handles them one at a time, in the calling thread.

    Two threads of its own, each for the loop's whole run, not one per task: one stores each
    result while the next task is processed (``_Finisher``), one extends the leases of the
    tasks it holds (``_Heartbeats``). Starting a thread per task cost more CPU than the rest of
    the loop's own work (docs/benchmarks.md).
    """

    def __init__(
        self,
        tasks: TaskLeases,
        storage: Storage,
        process: Processor,
        rejected: type[Exception],
        claim_wait_seconds: float,
        lease_seconds: float,
        http_timeout: float,
        stop: threading.Event,
        metrics: TaskMetrics | None = None,
        disk_full_deadline: float = DISK_FULL_DEADLINE_SECONDS,
        held_changed: Callable[[list[Claim]], None] | None = None,
    ) -> None:
        self._tasks = tasks
        # Told the claims held at each change (under the lock, so in order): a loop process
        # records them for its parent (darkroom.worker.heldtasks).
        self._held_changed = held_changed
        self._disk_full_deadline = disk_full_deadline
        self._metrics = metrics or TaskMetrics()
        self._storage = storage
        self._process = process
        self._rejected = rejected
        self._claim_wait = claim_wait_seconds
        self._http_timeout = http_timeout
        self._stop = stop
        self.completed = 0
        self.failed = 0
        # Waits between tasks given back because a service they need is down.
        self._outage = Backoff(first=0.5, cap=5.0)
        # Tasks being processed or stored, by id: what a stopping worker gives back.
        self._held: dict[str, _Held] = {}
        self._held_lock = threading.Lock()
        self._claiming = False  # waiting for a claim's answer (under the lock)
        self._heartbeats = _Heartbeats(tasks, max(lease_seconds / 3, 0.05), self._holding)

    def run(self) -> None:
        with self._metrics.running(), self._heartbeats.running():
            self._run()

    def _run(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        with _Finisher() as finisher:
            while not self._stop.is_set():
                try:
                    claim = self._claim()
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
                self._handle(claim, finisher)

    def _claim(self) -> Claim | None:
        with self._held_lock:
            self._claiming = True
        try:
            return self._tasks.claim(self._claim_wait, self._http_timeout)
        finally:
            with self._held_lock:
                self._claiming = False

    def idle(self) -> bool:
        """Whether the loop holds no task and waits for a claim's answer: a stopping worker may
        end it at once, without waiting out the claim. Its connection closes with it, and the
        database, seeing its caller gone, leases it nothing (``SqlTaskStore.claim``)."""
        with self._held_lock:
            return self._claiming and not self._held

    def handle(self, claim: Claim) -> None:
        """Process one claimed task to its end; every outcome is reported to the database."""
        with self._heartbeats.running():
            self._handle(claim, None)

    def _handle(self, claim: Claim, finisher: _Finisher | None) -> None:
        """With ``finisher``, storing the result and reporting it run there, in the background,
        while this loop claims and processes the next task: the CPU does not wait for the
        network. Without it, the task is done when this returns. The task id is the request id
        meanwhile: it is on every log line and downstream call.
        """
        token = requestid.current.set(claim.task_id)
        try:
            log.info("task claimed", extra={"task": claim.task_id, "attempt": claim.attempts})
            held = self._hold(claim)
            # Busy: the loop's time on the task, up to handing its result over (storing it
            # overlaps the next task, but waiting for the previous one to be stored counts).
            with self._metrics.busy():
                images = self._run_step(held, self._download_and_process)
                if images is not None and held.cancelled:
                    # Cancelled while it was processed: the result is never sent.
                    images.close()
                    images = None
                    self._cancelled(claim)
                if images is None:
                    self._let_go(held)
                    return
                finish = functools.partial(self._finish, held, images)
                if finisher is None:
                    finish()
                else:
                    finisher.run(contextvars.copy_context().run, finish)
        finally:
            requestid.current.reset(token)

    def _finish(self, held: _Held, images: _TaskImages) -> None:
        try:
            # Not given back by a stopping worker, nor cancelled by its client, meanwhile.
            if self._holds(held) and not held.cancelled:
                self._run_step(held, functools.partial(self._store_result, images=images))
        finally:
            images.close()
            self._let_go(held)

    def _hold(self, claim: Claim) -> _Held:
        held = _Held(claim, self._heartbeats.first_due())
        with self._held_lock:
            self._held[claim.task_id] = held
            self._tell_held()
        return held

    def _holding(self) -> list[_Held]:
        with self._held_lock:
            return list(self._held.values())

    def _holds(self, held: _Held) -> bool:
        with self._held_lock:
            return self._held.get(held.claim.task_id) is held

    def _let_go(self, held: _Held) -> None:
        with self._held_lock:
            if self._held.get(held.claim.task_id) is held:
                del self._held[held.claim.task_id]
                self._tell_held()

    def _tell_held(self) -> None:
        if self._held_changed is not None:
            self._held_changed([each.claim for each in self._held.values()])

    def close(self) -> None:
        """Close its leased calls: a loop on the task file takes its wake-ups' socket away."""
        self._tasks.close()

    def give_back_held(self) -> int:
        """Give back every task this loop holds, unspent: its worker stops before they are done.

        Called from another thread once the drain time is over; how many were given back.
        """
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
            self._tell_held()
        for each in held:
            log.info("worker stopping; task given back", extra={"task": each.claim.task_id})
            self._give_back(each.claim)
        return len(held)

    def _run_step(self, held: _Held, step: Callable[[_Held], _T]) -> _T | None:
        """Run one step of a task; a failure is reported (or waited out) and gives None."""
        claim = held.claim
        try:
            return step(held)
        except TaskWasCancelled:
            self._cancelled(claim)
        except LeaseLost:
            self._metrics.outcome(Outcome.LEASE_LOST)
            log.warning("lease lost; another worker has the task", extra={"task": claim.task_id})
        except (self._rejected, ImageGone, StorageFull) as exc:
            self.failed += 1
            self._metrics.outcome(Outcome.FAILED)
            self._report_failure(held, str(exc), retryable=False)
        except ServiceUnavailable as exc:
            # A service is down or restarting (also when it could not be reached at all).
            self._metrics.outcome(Outcome.ERROR)
            self._wait_out_outage(claim, exc)
        except Exception as exc:
            self._metrics.outcome(Outcome.ERROR)
            log.exception("task error", extra={"task": claim.task_id})
            reason = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
            self._report_failure(held, reason, retryable=True)
        return None

    def _cancelled(self, claim: Claim) -> None:
        """Its client cancelled the task: not a failure, nothing to report."""
        self._metrics.outcome(Outcome.CANCELLED)
        log.info("task cancelled by its client; stopped", extra={"task": claim.task_id})

    def _download_and_process(self, held: _Held) -> _TaskImages:
        """The task's image downloaded and processed; TaskWasCancelled at the end of the first
        stage after a heartbeat learned the task was cancelled (the next steps are not run)."""
        claim, stages = held.claim, held.stages

        def stage_done(name: str, started: float, ended: float) -> None:
            stages.add(name, started, ended)
            if held.cancelled:
                raise TaskWasCancelled(
                    "database", 409, TASK_CANCELLED_TITLE, "cancelled while it was processed"
                )

        download_started = time.perf_counter()
        try:
            download = self._storage.open(Folder.WORKING, claim.task_id)
        except ServiceNotFound as exc:
            # Claimable tasks always have their image, so it was expired or deleted since.
            raise ImageGone("the uploaded image is gone (expired or deleted)") from exc
        with download:
            images = _TaskImages(_read_body(download))
        try:
            downloaded = time.perf_counter()
            self._metrics.observe("download", downloaded - download_started)
            stages.add("download", download_started, downloaded)
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

    def _store_result(self, held: _Held, images: _TaskImages) -> None:
        claim, stages = held.claim, held.stages
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

    def _report_failure(self, held: _Held, error: str, retryable: bool) -> None:
        claim = held.claim
        log.warning(
            "task failed", extra={"task": claim.task_id, "error": error, "retryable": retryable}
        )
        try:
            self._tasks.fail(claim, error, retryable, stages=held.stages.take_new())
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


def _read_body(response: ImageAnswer) -> BinaryIO:
    """The downloaded image, ready to be read: the stored file itself when it is on this
    worker's volume; when its length says it fits in memory, the very bytes received (one
    read, no copy); else spilled to a temporary file as it arrives."""
    if isinstance(response, FileAnswer):
        return response.detach()
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= SPOOL_BYTES:
        return io.BytesIO(response.content)
    spooled = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 (closed with the task)
    try:
        for chunk in response.stream(SPOOL_BYTES if length.isdigit() else 256 * 1024):
            spooled.write(chunk)
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled


@dataclass(eq=False)
class _Held:
    """A task this loop holds, from its claim until it is done or given back."""

    claim: Claim
    # When the next heartbeat is due (time.monotonic()); only the heartbeat thread moves it.
    heartbeat_due: float
    # Its stages so far: sent with the heartbeats, the finish or the fail.
    stages: StageLog = field(default_factory=StageLog)
    # Set by a heartbeat that learned its client cancelled it: the loop stops at the next stage.
    cancelled: bool = False
    # Cleared once the database refused a heartbeat (cancelled, or the lease is lost).
    beating: bool = True


class _Heartbeats:
    """One thread that extends the leases of the tasks a loop holds, each every ``every`` s.

    It sleeps until the next heartbeat is due; a task claimed meanwhile needs no wake-up: its
    first heartbeat is due ``every`` s after its claim, and the thread sleeps at most that long.
    ``holding`` gives the tasks held now.
    """

    def __init__(self, tasks: TaskLeases, every: float, holding: Callable[[], list[_Held]]):
        self._tasks, self._every, self._holding = tasks, every, holding
        self._lock = threading.Lock()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def first_due(self) -> float:
        return time.monotonic() + self._every

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The thread runs while any caller is inside (the loop's run, or one ``handle``)."""
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stopping = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stopping,), daemon=True, name="heartbeats"
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                thread = self._thread if self._users == 0 else None
                if thread is not None:
                    self._thread = None
                    self._stopping.set()
            if thread is not None:
                thread.join()

    def _run(self, stopping: threading.Event) -> None:
        wait = self._every
        while not stopping.wait(wait):
            # A task claimed after this look is due no sooner than the wait computed from it.
            next_due = time.monotonic() + self._every
            for held in self._holding():
                if not held.beating:
                    continue
                if held.heartbeat_due <= time.monotonic():
                    held.heartbeat_due = time.monotonic() + self._every
                    self._beat(held)
                next_due = min(next_due, held.heartbeat_due)
            wait = max(next_due - time.monotonic(), 0.0)

    def _beat(self, held: _Held) -> None:
        claim = held.claim
        token = requestid.current.set(claim.task_id)  # heartbeats carry the task's request id
        try:
            # A heartbeat that fails loses the stages it carried: progress, not the result.
            self._tasks.heartbeat(claim, stages=held.stages.take_new())
        except TaskWasCancelled:
            held.cancelled, held.beating = True, False
        except LeaseLost:
            held.beating = False
        except Exception as exc:
            log.warning("heartbeat failed", extra={"task": claim.task_id, "error": str(exc)})
        finally:
            requestid.current.reset(token)


class _TaskImages:
    """A task's image and its result, in memory or spilled to disk, until the result is stored."""

    def __init__(self, source: BinaryIO) -> None:
        # Closed by close(), which may run in another thread once the result is stored.
        self.source = source
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
        # one thread, made at the first step and kept for the loop's run
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-result")
        self._pending: concurrent.futures.Future[Any] | None = None

    def run(self, step: Callable[..., Any], *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(step, *args)

    def wait(self) -> None:
        """Until the step before has ended; its exception, if it raised one."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> _Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()
