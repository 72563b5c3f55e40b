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
import signal
import threading
from collections.abc import Callable
from typing import BinaryIO

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.runtime import Runtime, configure_logging
from darkroom.core.server import serve
from darkroom.master.client import MasterClient
from darkroom.storage.client import StorageClient
from darkroom.worker.loop import Processor, TaskLoop
from darkroom.worker.metrics import (
    BusyFraction,
    TaskMetrics,
    multiprocess_dir,
    remove_multiprocess_dir,
)
from darkroom.worker.operations import ImageRejected, ProcessingSettings, process_image

log = logging.getLogger(__name__)


def loop_count(config: Config) -> int:
    return config.concurrency or os.cpu_count() or 1


def timed_processor(settings: ProcessingSettings, metrics: TaskMetrics) -> Processor:
    """``process_image`` with ``settings``, its decode, operation and encode times recorded."""

    def process(source: BinaryIO, destination: BinaryIO, pipeline: str) -> str:
        timings: dict[str, float] = {}
        try:
            return process_image(source, destination, pipeline, settings, timings)
        finally:
            metrics.observe_all(timings)

    return process


def build_loop(config: Config, runtime: Runtime, metrics: TaskMetrics | None = None) -> TaskLoop:
    settings = config.settings_for(ProcessingSettings)
    metrics = metrics or TaskMetrics()
    return TaskLoop(
        master=MasterClient(runtime.client("master")),
        storage=StorageClient(runtime.client("storage")),
        process=timed_processor(settings, metrics),
        rejected=ImageRejected,
        claim_wait_seconds=config.claim_wait_seconds,
        lease_seconds=config.lease_seconds,
        http_timeout=config.http_timeout_seconds,
        stop=runtime.stop,
        metrics=metrics,
    )


def _loop_process(config: Config) -> None:
    """Entry point of one loop process: runs until SIGTERM, then finishes its task.

    Its metrics go to files in PROMETHEUS_MULTIPROC_DIR, set by the parent before the start.
    """
    configure_logging(config.log_level, role="worker")
    runtime = Runtime(config, "worker")
    signal.signal(signal.SIGTERM, lambda *_: runtime.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _stop_when_orphaned(runtime.stop)
    build_loop(config, runtime).run()


def _stop_when_orphaned(stop: threading.Event) -> None:
    """Stop claiming once the parent is gone (SIGKILLed), instead of running on unsupervised."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("worker parent gone; stopping this task loop")
                stop.set()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


class LoopProcesses:
    """Keeps N loop processes running until stopped; their metrics are in ``metrics_dir``."""

    def __init__(self, config: Config, count: int) -> None:
        self._config = config
        self.metrics_dir = multiprocess_dir()
        self._context = multiprocessing.get_context("spawn")
        self._processes = [self._start() for _ in range(count)]
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="loop-watch")
        self._watcher.start()

    def _start(self) -> multiprocessing.process.BaseProcess:
        process = self._context.Process(target=_loop_process, args=(self._config,), daemon=False)
        process.start()
        return process

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for index, process in enumerate(self._processes):
                if not process.is_alive() and not self._stop.is_set():
                    log.error("task loop died; starting another", extra={"exit": process.exitcode})
                    mark_process_dead(process.pid, self.metrics_dir)
                    self._processes[index] = self._start()

    def stop(self, grace_seconds: float) -> None:
        self._stop.set()
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(grace_seconds)
            if process.is_alive():
                process.kill()
        remove_multiprocess_dir(self.metrics_dir)


class LoopThreads:
    def __init__(self, config: Config, runtime: Runtime, count: int, metrics: TaskMetrics) -> None:
        self._runtime = runtime
        self._threads = [
            threading.Thread(target=build_loop(config, runtime, metrics).run, name=f"loop-{n}")
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, grace_seconds: float) -> None:
        self._runtime.stop.set()
        for thread in self._threads:
            thread.join(grace_seconds)


def run(config: Config) -> None:
    runtime = Runtime(config, "worker")
    count = loop_count(config)
    registry = CollectorRegistry()
    loops: LoopProcesses | LoopThreads
    if config.worker_mode == "thread":
        metrics = TaskMetrics(registry)
        loops = LoopThreads(config, runtime, count, metrics)
        registry.register(BusyFraction([metrics.busy_seconds, metrics.loops]))
    else:
        loops = LoopProcesses(config, count)
        MultiProcessCollector(registry, path=loops.metrics_dir)
        registry.register(BusyFraction([MultiProcessCollector(None, path=loops.metrics_dir)]))
    log.info("worker started", extra={"loops": count, "mode": config.worker_mode})
    app = create_base_app(config, readiness=runtime.readiness_checks(), registry=registry)
    stopper: Callable[[float], None] = loops.stop
    try:
        serve(app, config, "worker")
    finally:
        # A claim waits at most claim_wait; a task gets a lease's time to finish.
        stopper(config.claim_wait_seconds + config.lease_seconds)
