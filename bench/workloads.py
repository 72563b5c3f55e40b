"""What the benchmark measures. Every loop is bounded in count and in time; all traffic goes to
127.0.0.1.
"""

from __future__ import annotations

import collections
import io
import multiprocessing
import statistics
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from darkroom.core.discovery import Backoff
from darkroom.worker.operations import ProcessingSettings, process_image
from images import result_digest
from system import DarkroomUp, memory_kib

STAGES = ("download", "decode", "operation", "encode", "upload")


class BenchError(RuntimeError):
    pass


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------------------------
# The bound: the worker's own processing in a plain loop, no HTTP.

_images: list[bytes] = []


def _load(paths: list[str], barrier: Any) -> None:
    global _images
    _images = [Path(path).read_bytes() for path in paths]
    barrier.wait()


def _ready(_: int) -> None:
    return None


def _process(index: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    process_image(io.BytesIO(_images[index]), io.BytesIO(), "swap", ProcessingSettings(), timings)
    return timings


def bound(paths: list[Path], processes: int) -> dict[str, Any]:
    """``process_image`` with default settings over the images, ``processes`` at a time."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, _load, ([str(p) for p in paths], barrier)) as pool:
        pool.map(_ready, range(processes), chunksize=1)  # every process has loaded the images
        started = time.perf_counter()
        timings = pool.map(_process, range(len(paths)), chunksize=1)
        elapsed = time.perf_counter() - started
    return {
        "processes": processes,
        "images": len(paths),
        "seconds": elapsed,
        "images_per_s": len(paths) / elapsed,
        "stage_ms": {
            stage: 1000 * statistics.fmean(t[stage] for t in timings)
            for stage in ("decode", "operation", "encode")
        },
    }


# ---------------------------------------------------------------------------------------------
# End to end through the public API


class _Sessions(threading.local):
    def __init__(self, token: str) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {token}"


def _metric_samples(system: DarkroomUp) -> dict[str, float]:
    text = system.session.get(system.url("worker", "/metrics"), timeout=10).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("darkroom_worker_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def end_to_end(
    system: DarkroomUp,
    images: list[bytes],
    digests: list[str],
    timeout: float,
    uploaders: int = 4,
    downloaders: int = 2,
    wait_seconds: float = 10.0,
) -> dict[str, Any]:
    """Upload every image at once, follow them, download and verify each result.

    One poller long-polls ``/isReady?wait=`` for the oldest unfinished job only (jobs are
    claimed in order): the master answers when it is finished, so the client costs the system
    about one ``/isReady`` per job and learns of each result at once.
    """
    local = _Sessions(system.token)
    master = system.url("master")
    count = len(images)
    uploaded: collections.deque[tuple[int, str, float]] = collections.deque()
    arrived = threading.Condition()
    results: dict[int, tuple[bytes, float, float]] = {}
    failures: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    metrics_before = _metric_samples(system)
    cpu_before, client_before = system.cpu_seconds(), time.process_time()
    wall_started = time.perf_counter()

    def upload(index: int) -> None:
        started = time.perf_counter()
        response = local.session.post(f"{master}/new", data=images[index], timeout=60)
        if response.status_code != 200:
            raise BenchError(f"upload {index}: {response.status_code} {response.text[:200]}")
        with arrived:
            uploaded.append((index, response.text.strip(), started))
            arrived.notify()

    def download(index: int, task_id: str, started: float) -> None:
        url = f"{master}/get"
        with local.session.get(url, params={"id": task_id}, timeout=60, stream=True) as response:
            if response.status_code != 200:
                failures[index] = f"download: {response.status_code} {response.text[:200]}"
                return
            data = b"".join(response.iter_content(1024 * 1024))
        results[index] = (data, started, time.perf_counter())

    with (
        ThreadPoolExecutor(uploaders, "upload") as upload_pool,
        ThreadPoolExecutor(downloaders, "download") as download_pool,
    ):
        upload_futures = [upload_pool.submit(upload, index) for index in range(count)]
        downloads = []
        followed = 0
        not_held = Backoff(first=0.005, cap=0.1)
        while followed < count:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"end to end: {count - followed} jobs unfinished after {timeout} s"
                )
            with arrived:
                if not uploaded:
                    if any(f.done() and f.exception() for f in upload_futures):
                        next(f for f in upload_futures if f.done() and f.exception()).result()
                    arrived.wait(0.1)
                    continue
                index, task_id, started = uploaded[0]
            params = {"id": task_id, "wait": wait_seconds}
            asked = time.monotonic()
            answer = local.session.get(f"{master}/isReady", params=params, timeout=60)
            if answer.status_code == 200 and answer.text.strip() == "1":
                downloads.append(download_pool.submit(download, index, task_id, started))
            elif answer.status_code == 200:
                if time.monotonic() - asked < wait_seconds / 2:
                    # Answered without waiting (a busy master, or code without long polls).
                    time.sleep(not_held.next())
                continue
            else:
                failures[index] = f"isReady: {answer.status_code} {answer.text[:200]}"
            with arrived:
                uploaded.popleft()
            followed += 1
            not_held.reset()
        for future in (*upload_futures, *downloads):
            future.result()
    wall = time.perf_counter() - wall_started
    cpu_after, client_after = system.cpu_seconds(), time.process_time()
    metrics_after = _metric_samples(system)

    # Checking the pixels is the benchmark's work, not the system's: after the clock stops.
    wrong = [i for i, (data, _, _) in results.items() if result_digest(data) != digests[i]]
    if failures or wrong:
        raise BenchError(f"end to end: failed {failures}, wrong pixels in results {wrong}")
    first = min(started for _, started, _ in results.values())
    finished = sorted(done for _, _, done in results.values())
    latencies = [done - started for _, started, done in results.values()]
    elapsed = finished[-1] - first
    figures: dict[str, Any] = {
        "workers": system.workers,
        "jobs": count,
        "seconds": elapsed,
        "jobs_per_s": count / elapsed,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "verified": len(results),
    }
    if count >= 10:  # the rate once the pipeline is full: from the 10th to the 90th percent
        low, high = round(0.1 * (count - 1)), round(0.9 * (count - 1))
        figures["steady_jobs_per_s"] = (high - low) / max(finished[high] - finished[low], 1e-9)
    figures.update(_worker_figures(metrics_before, metrics_after, system.workers, count, wall))
    # CPU per job is what the machine's load changes least: the figure to compare runs by.
    cpu = {role: 1000 * (cpu_after[role] - cpu_before.get(role, 0.0)) / count for role in cpu_after}
    cpu["client"] = 1000 * (client_after - client_before) / count
    figures["cpu_ms_per_job"] = cpu
    figures["cpu_share"] = (sum(cpu.values()) * count / 1000) / wall  # cores used, all processes
    return figures


def _worker_figures(
    before: dict[str, float], after: dict[str, float], loops: int, jobs: int, wall: float
) -> dict[str, Any]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return {
        "worker_busy_fraction": delta("darkroom_worker_busy_seconds_total") / (wall * loops),
        "worker_stage_ms": {
            stage: 1000 * delta(f'darkroom_worker_stage_seconds_sum{{stage="{stage}"}}') / jobs
            for stage in STAGES
        },
    }


# ---------------------------------------------------------------------------------------------
# Idle latency


def idle_latency(system: DarkroomUp, image: bytes, repeats: int) -> dict[str, Any]:
    """One image at a time on an idle system: from the upload to ``/isReady`` answering 1.

    The client long-polls (``wait``), so the figure holds no polling interval of its own.
    """
    session = system.session
    master = system.url("master")
    latencies = []
    for _ in range(repeats):
        time.sleep(0.2)  # let the worker go back to waiting for a claim
        started = time.perf_counter()
        task_id = session.post(f"{master}/new", data=image, timeout=30).text.strip()
        deadline = time.monotonic() + 30
        params = {"id": task_id, "wait": 5}
        while session.get(f"{master}/isReady", params=params, timeout=30).text != "1":
            if time.monotonic() > deadline:
                raise BenchError(f"idle latency: job {task_id} not ready after 30 s")
        latencies.append(time.perf_counter() - started)
    return {
        "repeats": repeats,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "min_ms": 1000 * min(latencies),
    }


# ---------------------------------------------------------------------------------------------
# Memory while a large upload streams through


def _large_body(size: int) -> Iterator[bytes]:
    """A PNG signature and header, then filler: the master accepts it, the worker fails it."""
    header = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", 4000, 4000, 8, 2, 0, 0, 0)
    header += struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    yield header
    left = size - len(header)
    filler = bytes(1024 * 1024)
    while left > 0:
        piece = filler[: min(left, len(filler))]
        left -= len(piece)
        yield piece


def memory(system: DarkroomUp, size: int, timeout: float = 300.0) -> dict[str, Any]:
    """Peak RSS growth of the master and the storage while ``size`` bytes are uploaded."""
    pids = system.child_pids()
    watched = {role: pids[role] for role in ("master", "storage")}
    before = {role: memory_kib(pid) for role, pid in watched.items()}
    peak = {role: values["VmRSS"] for role, values in before.items()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for role, pid in watched.items():
                peak[role] = max(peak[role], memory_kib(pid)["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        response = system.session.post(
            system.url("master", "/new"), data=_large_body(size), timeout=timeout
        )
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
    finally:
        done.set()
        sampler.join()
    if response.status_code != 200:
        raise BenchError(f"large upload: {response.status_code} {response.text[:200]}")
    after = {role: memory_kib(pid) for role, pid in watched.items()}
    _wait_finished(system, response.text.strip(), timeout)
    figures: dict[str, Any] = {"upload_mb": size / 1e6, "upload_seconds": elapsed}
    for role in watched:
        figures[role] = {
            "rss_before_mb": before[role]["VmRSS"] / 1024,
            "rss_peak_mb": peak[role] / 1024,
            "rss_growth_mb": (peak[role] - before[role]["VmRSS"]) / 1024,
            "hwm_growth_mb": (after[role]["VmHWM"] - before[role]["VmHWM"]) / 1024,
        }
    return figures


def _wait_finished(system: DarkroomUp, task_id: str, timeout: float) -> str:
    """Until the worker is done with the task (it fails it: not an image), so it is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = system.session.get(system.url("master", "/status"), params={"id": task_id})
        state = status.json().get("stateName", "")
        if state in ("finished", "failed"):
            return state
        time.sleep(0.2)
    raise BenchError(f"task {task_id} still unfinished after {timeout} s")


# ---------------------------------------------------------------------------------------------
# The database alone


def database(base_url: str, token: str, tasks: int, concurrency: int) -> dict[str, Any]:
    """Create, claim and finish ``tasks`` tasks with ``concurrency`` clients, phase by phase."""
    local = _Sessions(token)

    def post(path: str, **params: Any) -> requests.Response:
        response = local.session.post(f"{base_url}{path}", params=params, timeout=30)
        if response.status_code >= 400:
            raise BenchError(f"database {path}: {response.status_code} {response.text[:200]}")
        return response

    def create(_: int) -> None:
        task_id = post("/newTask", pipeline="swap").text
        post("/enqueueTask", id=task_id)

    claims: list[tuple[str, str]] = []
    claims_lock = threading.Lock()

    def claim_until_empty(_: int) -> None:
        for _ in range(tasks + 1):  # bounded: at most every task
            response = post("/getNewTask", wait=0)
            if response.status_code == 204:
                return
            task = response.json()
            with claims_lock:
                claims.append((task["id"], task["lease"]))

    def finish(claim: tuple[str, str]) -> None:
        post("/finishTask", id=claim[0], lease=claim[1])

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(create, range(tasks)))
        created = time.perf_counter()
        list(pool.map(claim_until_empty, range(concurrency)))
        claimed = time.perf_counter()
        list(pool.map(finish, claims))
        finished = time.perf_counter()
    if len(claims) != tasks:
        raise BenchError(f"database: claimed {len(claims)} of {tasks} tasks")
    return {
        "concurrency": concurrency,
        "tasks": tasks,
        "creates_per_s": tasks / (created - started),
        "claims_per_s": tasks / (claimed - created),
        "finishes_per_s": tasks / (finished - claimed),
    }
