"""Running the worker: N task loops (processes or threads) and a small health server.

Processes by default: Pillow releases the GIL while it decodes and encodes, so threads
measured about as fast (docs/benchmarks.md), but the work between those calls holds it, and a
crash or leak stays in one loop process, which is then started again. ``/metrics`` adds up the
loop processes' figures (prometheus_client multiprocess mode, see darkroom.worker.metrics).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.leases import TaskLeases
from darkroom.core.lifecycle import stop_with_parent
from darkroom.core.restart import RestartPolicy
from darkroom.core.runtime import Runtime, configure_logging
from darkroom.core.server import serve
from darkroom.database.client import DatabaseLeases
from darkroom.database.direct import leases_for, require_task_file
from darkroom.storage.client import storage_for
from darkroom.worker.heldtasks import HeldTasks, fail_lost
from darkroom.worker.loop import Processed, Processor, TaskLoop
from darkroom.worker.metrics import (
    BusyFraction,
    TaskMetrics,
    multiprocess_dir,
    remove_multiprocess_dir,
)
from darkroom.worker.operations import (
    ImageRejected,
    ProcessingSettings,
    process_image,
    use_pixel_limit,
)
from darkroom.worker.stages import StageDone, no_stage

log = logging.getLogger(__name__)

# How often a stopping worker looks whether each loop has finished, or is idle in a claim.
STOP_POLL_SECONDS = 0.05


def loop_count(config: Config) -> int:
    return config.concurrency or os.cpu_count() or 1


def timed_processor(settings: ProcessingSettings, metrics: TaskMetrics) -> Processor:
    """``process_image`` with ``settings``, its decode, operation and encode times recorded."""

    def process(
        source: BinaryIO, destination: BinaryIO, pipeline: str, *, stage_done: StageDone = no_stage
    ) -> Processed:
        timings: dict[str, float] = {}
        notes: list[str] = []  # what the job's status should tell
        try:
            media_type = process_image(
                source, destination, pipeline, settings, timings, notes, stage_done=stage_done
            )
            return Processed(media_type, tuple(notes))
        finally:
            metrics.observe_all(timings)

    return process


def build_loop(
    config: Config,
    runtime: Runtime,
    metrics: TaskMetrics | None = None,
    held: HeldTasks | None = None,
) -> TaskLoop:
    settings = config.settings_for(ProcessingSettings)
    use_pixel_limit(settings)
    metrics = metrics or TaskMetrics()
    return TaskLoop(
        tasks=leases_for(config, runtime.client("database"), runtime.stop),
        storage=storage_for(config, runtime.client("storage")),
        process=timed_processor(settings, metrics),
        rejected=ImageRejected,
        claim_wait_seconds=config.claim_wait_seconds,
        lease_seconds=config.lease_seconds,
        http_timeout=config.http_timeout_seconds,
        stop=runtime.stop,
        metrics=metrics,
        held_changed=held.write if held is not None else None,
    )


def _loop_process(config: Config, parent_pid: int, held_path: Path) -> None:
    """Entry point of one loop process: runs until SIGTERM, then drains (see ``_drain``).

    Its metrics go to files in PROMETHEUS_MULTIPROC_DIR, set by the parent before the start.
    """
    configure_logging(config.log_level, config.log_format, role="worker")
    # SIGTERM is taken by a thread of its own: a handler would wait for the main thread to
    # leave the Pillow call it is in, which can take seconds. Blocked here, before any thread
    # starts, so that every thread inherits the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    runtime = Runtime(config, "worker")
    loop = build_loop(config, runtime, held=HeldTasks(held_path))
    finished = threading.Event()
    drain = (loop, runtime.stop, finished, config.drain_seconds)
    threading.Thread(target=_drain, args=drain, daemon=True, name="drain").start()
    stop_with_parent(parent_pid)
    try:
        loop.run()
    finally:
        finished.set()
        loop.close()


def _drain(loop: TaskLoop, stop: threading.Event, finished: threading.Event, grace: float) -> None:
    """On SIGTERM, stop claiming; a task in hand gets ``grace`` s, then is given back: exit.

    An idle loop exits at once: its claim, pending at the database, ends with its connection.
    """
    signal.sigwait({signal.SIGTERM})
    stop.set()
    if loop.idle():
        _exit(loop)
    if not finished.wait(grace) and loop.give_back_held():
        _exit(loop)  # the task is given back: the processing in the main thread is moot


def _exit(loop: TaskLoop) -> None:
    """End the loop process now, its leased calls closed (a store's socket goes with them)."""
    loop.close()
    os._exit(0)


class LoopProcesses:
    """Keeps N loop processes running until stopped; their metrics are in ``metrics_dir``.

    The tasks a process held when it died are failed at once through ``leases``, each an
    attempt spent (darkroom.worker.heldtasks), not left to their leases' expiry."""

    def __init__(self, config: Config, count: int, leases: TaskLeases) -> None:
        self._config = config
        self._leases = leases
        self.metrics_dir = multiprocess_dir()
        self._held_dir = Path(tempfile.mkdtemp(prefix="darkroom-held-"))
        self._held = [HeldTasks(self._held_dir / f"loop-{slot}.json") for slot in range(count)]
        self._context = multiprocessing.get_context("spawn")
        self._restarts = [RestartPolicy(first=0.5, cap=10.0) for _ in range(count)]
        self._processes = [self._start(slot) for slot in range(count)]
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="loop-watch")
        self._watcher.start()

    def _start(self, slot: int) -> multiprocessing.process.BaseProcess:
        process = self._context.Process(
            target=_loop_process,
            args=(self._config, os.getpid(), self._held[slot].path),
            daemon=False,
        )
        self._restarts[slot].started()
        process.start()
        return process

    def _watch(self) -> None:
        restart_at: dict[int, float] = {}
        while not self._stop.wait(0.5):
            for slot, process in enumerate(self._processes):
                if process.is_alive() or self._stop.is_set():
                    continue
                if slot not in restart_at:
                    delay = self._restarts[slot].delay_after_exit() or 0.0
                    log.error(
                        "task loop died; starting another",
                        extra={"exit": process.exitcode, "retry_in": delay},
                    )
                    mark_process_dead(process.pid, self.metrics_dir)
                    fail_lost(self._held[slot], process.exitcode, self._leases)
                    restart_at[slot] = time.monotonic() + delay
                elif time.monotonic() >= restart_at[slot]:
                    del restart_at[slot]
                    self._processes[slot] = self._start(slot)

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM every loop; each drains (``_drain``); kill those still running after that."""
        self._stop.set()
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + self._config.claim_wait_seconds + 2
        for process in self._processes:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                process.kill()
        remove_multiprocess_dir(self.metrics_dir)
        shutil.rmtree(self._held_dir, ignore_errors=True)  # what is left, leases put back


class LoopThreads:
    def __init__(self, config: Config, runtime: Runtime, count: int, metrics: TaskMetrics) -> None:
        self._runtime = runtime
        self._loops = [build_loop(config, runtime, metrics) for _ in range(count)]
        # Daemons: a loop still processing a task given back must not keep the process alive.
        self._threads = [
            threading.Thread(target=loop.run, name=f"loop-{n}", daemon=True)
            for n, loop in enumerate(self._loops)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, grace_seconds: float) -> None:
        """Stop claiming; give back the tasks still in hand after ``grace_seconds``. Loops
        waiting for a claim are not waited for: the process's exit ends their claims."""
        self._runtime.stop.set()
        deadline = time.monotonic() + grace_seconds
        for loop, thread in zip(self._loops, self._threads, strict=True):
            while thread.is_alive() and not loop.idle() and time.monotonic() < deadline:
                thread.join(STOP_POLL_SECONDS)
        for loop, thread in zip(self._loops, self._threads, strict=True):
            if thread.is_alive():
                loop.give_back_held()


def run(config: Config) -> None:
    runtime = Runtime(config, "worker")
    storage_for(config, runtime.client("storage"))  # a volume it cannot use stops it here, once
    require_task_file(config)  # ... and a task file that is not the database's
    count = loop_count(config)
    registry = CollectorRegistry()
    loops: LoopProcesses | LoopThreads
    if config.worker_mode == "thread":
        metrics = TaskMetrics(registry)
        loops = LoopThreads(config, runtime, count, metrics)
        registry.register(BusyFraction([metrics.busy_seconds, metrics.loops]))
    else:
        loops = LoopProcesses(config, count, DatabaseLeases(runtime.client("database")))
        MultiProcessCollector(registry, path=loops.metrics_dir)
        registry.register(BusyFraction([MultiProcessCollector(None, path=loops.metrics_dir)]))
    log.info("worker started", extra={"loops": count, "mode": config.worker_mode})
    app = create_base_app(config, readiness=runtime.readiness_checks(), registry=registry)
    stopper: Callable[[float], None] = loops.stop
    try:
        serve(app, config, "worker")
    finally:
        # A task in hand gets the drain time to finish, then is given back unspent.
        stopper(config.drain_seconds)
