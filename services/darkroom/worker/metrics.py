"""What a worker reports to Prometheus.

- ``darkroom_worker_tasks_total{outcome}``, ``darkroom_worker_stage_seconds{stage}``
  (download, decode, operation, encode, upload), ``darkroom_worker_busy_seconds_total``,
  ``darkroom_worker_loops``, ``darkroom_worker_busy_loops`` and
  ``darkroom_worker_busy_fraction`` (share of loop time spent on tasks since the last scrape).

Worker loop processes write their figures with prometheus_client's multiprocess mode: the worker
sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh temporary folder before it starts them
(``multiprocess_dir``), and its ``/metrics`` adds them up with a ``MultiProcessCollector``.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from darkroom.core.metrics import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGES = ("download", "decode", "operation", "encode", "upload")


class Outcome(enum.StrEnum):
    """How a task ended for this worker: the ``outcome`` label of its task counter."""

    DONE = "done"  # result stored and reported
    FAILED = "failed"  # the image was rejected (or is gone): failed for good
    ERROR = "error"  # something else went wrong: retried, or given back during an outage
    LEASE_LOST = "lease_lost"  # another worker has the task now
    CANCELLED = "cancelled"  # its client cancelled it: stopped, nothing stored as finished


class TaskMetrics:
    """What a worker's task loops report; safe to share between the loops of one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.tasks = Counter(
            "darkroom_worker_tasks",
            "Tasks handled, by outcome: done (result stored), failed (image rejected, final), "
            "error (unexpected, given back for a retry), lease_lost.",
            ["outcome"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "darkroom_worker_stage_seconds",
            "Seconds per task spent in each stage: download, decode, operation, encode, upload.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.busy_seconds = Counter(
            "darkroom_worker_busy_seconds",
            "Seconds the task loops spent handling tasks (not waiting for one).",
            registry=registry,
        )
        self.loops = Gauge(
            "darkroom_worker_loops",
            "Task loops running.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.busy_loops = Gauge(
            "darkroom_worker_busy_loops",
            "Task loops handling a task right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Every label made at the start (so each series shows from the first scrape) and kept:
        # a task's half a dozen updates then skip the look-up under the metric's lock.
        self._outcomes = {outcome: self.tasks.labels(outcome) for outcome in Outcome}
        self._stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}

    def outcome(self, outcome: Outcome) -> None:
        self._outcomes[outcome].inc()

    def observe(self, stage: str, seconds: float) -> None:
        histogram = self._stages.get(stage)
        (histogram or self.stage_seconds.labels(stage)).observe(seconds)

    def observe_all(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.observe(stage, seconds)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(name, time.perf_counter() - started)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a loop's life: counts it in ``darkroom_worker_loops``."""
        self.loops.inc()
        try:
            yield
        finally:
            self.loops.dec()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one task: busy time and the busy-loops gauge."""
        started = time.perf_counter()
        self.busy_loops.inc()
        try:
            yield
        finally:
            self.busy_loops.dec()
            self.busy_seconds.inc(time.perf_counter() - started)


def sum_samples(sources: Iterable[Collector], name: str) -> float:
    return sum(
        sample.value
        for source in sources
        for family in source.collect()
        for sample in family.samples
        if sample.name == name
    )


class BusyFraction:
    """``darkroom_worker_busy_fraction``: busy seconds / (loops x seconds) since the last scrape.

    ``sources`` are the collectors that hold ``darkroom_worker_busy_seconds_total`` and
    ``darkroom_worker_loops`` (the loops' own metrics, or a MultiProcessCollector).
    """

    def __init__(
        self, sources: Iterable[Collector], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sources = list(sources)
        self._clock = clock
        self._lock = threading.Lock()
        self._last = (clock(), self._busy())

    def _busy(self) -> float:
        return sum_samples(self._sources, "darkroom_worker_busy_seconds_total")

    def collect(self) -> Iterator[Metric]:
        now, busy = self._clock(), self._busy()
        loops = sum_samples(self._sources, "darkroom_worker_loops")
        with self._lock:
            (then, busy_then), self._last = self._last, (now, busy)
        capacity = (now - then) * loops
        fraction = min(max((busy - busy_then) / capacity, 0.0), 1.0) if capacity > 0 else 0.0
        yield GaugeMetricFamily(
            "darkroom_worker_busy_fraction",
            "Share of the task loops' time spent handling tasks since the previous scrape.",
            value=fraction,
        )


MULTIPROC_PREFIX = "darkroom-metrics-"
# Lock of each folder this process made, open until ``remove_multiprocess_dir`` (or the end of
# the process, whichever way it ends: the kernel then drops the lock).
_held_locks: dict[str, int] = {}


def multiprocess_dir() -> str:
    """A fresh, empty folder for loop processes' metric files, set in ``PROMETHEUS_MULTIPROC_DIR``.

    Only processes started after this call (and importing prometheus_client afresh, as spawned
    processes do) write there; the caller removes it with ``remove_multiprocess_dir``. Folders
    left by workers that were killed are removed first (``remove_stale_multiprocess_dirs``).

    The folder, ``darkroom-metrics-<pid>-<random>`` (the pid is only for people), stays locked
    while this process lives. It is made as a dot-folder, which the cleanup ignores, and renamed
    once locked, so another worker's cleanup never finds it unlocked.
    """
    remove_stale_multiprocess_dirs()
    staging = tempfile.mkdtemp(prefix=f".{MULTIPROC_PREFIX}{os.getpid()}-")
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    head, name = os.path.split(staging)
    path = os.path.join(head, name.removeprefix("."))
    os.rename(staging, path)
    _held_locks[path] = fd
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_stale_multiprocess_dirs(root: str | None = None) -> int:
    """Removes the metric folders under ``root`` (the temporary folder) that no process holds.

    Those are the folders of workers that were killed (SIGKILL, OOM) before they could remove
    their own. A live worker holds a lock (flock) on its folder, which the kernel drops when the
    process ends, however it ends, so the lock tells them apart. The pid in the name cannot: in
    a container the worker is always PID 1, like the killed worker before it whose folder is
    still in the pod's /tmp (an emptyDir outlives its container), so that folder would look
    alive forever; and in a /tmp shared across pid namespaces a live worker's pid can look dead.
    Returns how many folders were removed.
    """
    removed = 0
    for entry in Path(root or tempfile.gettempdir()).glob(f"{MULTIPROC_PREFIX}*-*"):
        try:
            # Not a symlink, and only our own folders (a shared /tmp holds other users' too).
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # locked: its worker is alive
        else:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


def remove_multiprocess_dir(path: str) -> None:
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)
    fd = _held_locks.pop(path, None)
    if fd is not None:
        os.close(fd)
