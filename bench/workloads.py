"""What the benchmark measures. Every loop is bounded in count and in time; all traffic goes to
127.0.0.1.
"""

from __future__ import annotations

import collections
import io
import itertools
import multiprocessing
import statistics
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from darkroom.core.discovery import Backoff
from darkroom.worker.operations import ProcessingSettings, process_image
from harness.metrics import Samples, samples, total, value
from harness.proc import memory_kib
from images import result_digest, thumbnail_problem
from system import BenchedUp

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
_pipeline = "swap"


def _load(paths: list[str], pipeline: str, barrier: Any) -> None:
    global _images, _pipeline
    _images, _pipeline = [Path(path).read_bytes() for path in paths], pipeline
    barrier.wait()


def _ready(_: int) -> None:
    return None


def _process(index: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    cpu_started = time.process_time()
    source, settings = io.BytesIO(_images[index]), ProcessingSettings()
    process_image(source, io.BytesIO(), _pipeline, settings, timings)
    timings["cpu"] = time.process_time() - cpu_started
    return timings


def bound(paths: list[Path], processes: int, pipeline: str = "swap") -> dict[str, Any]:
    """``process_image`` with default settings over the images, ``processes`` at a time."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, _load, ([str(p) for p in paths], pipeline, barrier)) as pool:
        pool.map(_ready, range(processes), chunksize=1)  # every process has loaded the images
        started = time.perf_counter()
        timings = pool.map(_process, range(len(paths)), chunksize=1)
        elapsed = time.perf_counter() - started
    return {
        "processes": processes,
        "images": len(paths),
        "pipeline": pipeline,
        "seconds": elapsed,
        "images_per_s": len(paths) / elapsed,
        "stage_ms": {
            stage: 1000 * statistics.fmean(t[stage] for t in timings)
            for stage in ("decode", "operation", "encode")
        },
        # CPU, not wall time: what the processing itself costs, whatever else runs meanwhile.
        "cpu_ms_per_image": 1000 * statistics.fmean(t["cpu"] for t in timings),
    }


# ---------------------------------------------------------------------------------------------
# End to end through the public API


class _Sessions(threading.local):
    """A session per thread (a requests.Session is not safe to share between threads)."""

    def __init__(self, token: str | None) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"


def _metric_samples(system: BenchedUp, role: str = "worker") -> Samples:
    return samples(system.session.get(system.url(role, "/metrics"), timeout=10).text)


# The roles whose answered requests are counted per job: every exchange of a job is answered
# by one of them (the workers answer none).
SERVING_ROLES = ("master", "database", "storage")


def _requests_answered(system: BenchedUp) -> dict[str, float]:
    """Requests each serving role has answered so far, but its /metrics scrapes."""
    answered = {}
    for role in SERVING_ROLES:
        found = _metric_samples(system, role)
        scrapes = sum(
            count
            for (name, labels), count in found.items()
            if name == "darkroom_http_requests_total" and ("route", "/metrics") in labels
        )
        answered[role] = total(found, "darkroom_http_requests_total") - scrapes
    return answered


def end_to_end(
    system: BenchedUp,
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
    usage = _Usage(system)

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
    used = usage.figures(count)

    # Checking the pixels is the benchmark's work, not the system's: after the clock stops.
    wrong = [i for i, (data, _, _) in results.items() if result_digest(data) != digests[i]]
    if failures or wrong:
        raise BenchError(f"end to end: failed {failures}, wrong pixels in results {wrong}")
    spans = [(started, done) for _, started, done in results.values()]
    return {"workers": system.workers, **rates(spans, "jobs_per_s"), **used}


def rates(spans: list[tuple[float, float]], unit: str) -> dict[str, Any]:
    """Throughput and latency of jobs given as (started, done): from the first start to the
    last end, and "steady" from the 10th to the 90th percent of ends."""
    count = len(spans)
    finished = sorted(done for _, done in spans)
    latencies = [done - started for started, done in spans]
    elapsed = finished[-1] - min(started for started, _ in spans)
    figures: dict[str, Any] = {
        "jobs": count,
        "seconds": elapsed,
        unit: count / elapsed,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "verified": count,
    }
    if count >= 10:  # the rate once the pipeline is full
        low, high = round(0.1 * (count - 1)), round(0.9 * (count - 1))
        figures[f"steady_{unit}"] = (high - low) / max(finished[high] - finished[low], 1e-9)
    return figures


class _Usage:
    """CPU and worker metrics from now until ``figures``: what a run cost, per job."""

    def __init__(self, system: BenchedUp) -> None:
        self.system = system
        self.metrics = _metric_samples(system)
        self.answered = _requests_answered(system)
        # the kernel's share first, so that reading it is not counted as the client's CPU
        self.kernel = system.cpu_seconds(kernel_only=True)
        self.cpu, self.client = system.cpu_seconds(), time.process_time()
        self.started = time.perf_counter()

    def figures(self, jobs: int) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        cpu_after, client_after = self.system.cpu_seconds(), time.process_time()
        kernel_after = self.system.cpu_seconds(kernel_only=True)
        metrics = _metric_samples(self.system)
        answered = _requests_answered(self.system)
        figures = _worker_figures(self.metrics, metrics, self.system.workers, jobs, wall)
        # how many exchanges a job costs, by the role answering them (the client's included)
        figures["requests_per_job"] = {
            role: (answered[role] - self.answered[role]) / jobs for role in SERVING_ROLES
        }
        # CPU per job is what the machine's load changes least: the figure to compare runs by.
        cpu = {
            role: 1000 * (after - self.cpu.get(role, 0.0)) / jobs
            for role, after in cpu_after.items()
        }
        cpu["client"] = 1000 * (client_after - self.client) / jobs
        figures["cpu_ms_per_job"] = cpu
        # of it, the kernel's work (moving bytes through sockets and files, fsync)
        figures["kernel_ms_per_job"] = {
            role: 1000 * (after - self.kernel.get(role, 0.0)) / jobs
            for role, after in kernel_after.items()
        }
        figures["cpu_share"] = (sum(cpu.values()) * jobs / 1000) / wall  # cores used
        return figures


def _worker_figures(
    before: Samples, after: Samples, loops: int, jobs: int, wall: float
) -> dict[str, Any]:
    busy = total(after, "darkroom_worker_busy_seconds_total") - total(
        before, "darkroom_worker_busy_seconds_total"
    )

    def stage_seconds(stage: str) -> float:
        name = "darkroom_worker_stage_seconds_sum"
        return value(after, name, stage=stage) - value(before, name, stage=stage)

    return {
        "worker_busy_fraction": busy / (wall * loops),
        "worker_stage_ms": {stage: 1000 * stage_seconds(stage) / jobs for stage in STAGES},
    }


# ---------------------------------------------------------------------------------------------
# Clients that submit and follow one job at a time, as users' programs do

Check = Callable[[int, bytes], str | None]  # what is wrong with job N's result; None: right
Spans = list[tuple[bytes, float, float]]  # each job's result, start and end


@dataclass(frozen=True)
class Poll:
    """How a client learns that its job is done: one long poll of up to ``wait`` seconds at a
    time, or asking ``/isReady`` again every ``interval`` seconds as the seed's clients do."""

    wait: float = 0.0
    interval: float = 0.0

    @property
    def text(self) -> str:
        if self.wait:
            return f"long polls (wait={self.wait:g})"
        return f"polling every {1000 * self.interval:g} ms"


def client_jobs(
    system: BenchedUp,
    images: list[bytes],
    check: Check,
    jobs: int,
    threads: int,
    poll: Poll,
    timeout: float,
    op: str | None = None,
) -> dict[str, Any]:
    """``jobs`` jobs over ``images`` in turn; each of ``threads`` clients uploads one to
    ``/new``, waits for it as ``poll`` says, downloads it from ``/get`` and takes the next."""
    local = _Sessions(system.token)
    master = system.url("master")
    deadline = time.monotonic() + timeout
    params = {"op": op} if op else {}

    def one(index: int) -> tuple[bytes, float, float]:
        session = local.session
        started = time.perf_counter()
        data = images[index % len(images)]
        task_id = _expect(
            session.post(f"{master}/new", params=params, data=data, timeout=60), "/new"
        ).text.strip()
        _wait_ready(session, master, task_id, poll, deadline)
        result = _expect(session.get(f"{master}/get", params={"id": task_id}, timeout=60), "/get")
        return result.content, started, time.perf_counter()

    usage = _Usage(system)
    spans = _run_clients(one, jobs, threads)
    used = usage.figures(jobs)
    _verify(spans, check)
    return {
        "workers": system.workers,
        "threads": threads,
        "poll": poll.text,
        **rates([(started, done) for _, started, done in spans], "jobs_per_s"),
        **used,
    }


def _wait_ready(
    session: requests.Session, master: str, task_id: str, poll: Poll, deadline: float
) -> None:
    params: dict[str, Any] = {"id": task_id, **({"wait": poll.wait} if poll.wait else {})}
    not_held = Backoff(first=0.005, cap=0.1)
    while time.monotonic() < deadline:
        asked = time.monotonic()
        answer = _expect(
            session.get(f"{master}/isReady", params=params, timeout=poll.wait + 30), "/isReady"
        )
        if answer.text.strip() == "1":
            return
        if poll.interval:
            time.sleep(poll.interval)
        elif time.monotonic() - asked < poll.wait / 2:
            time.sleep(not_held.next())  # answered without waiting: a busy master
    raise BenchError(f"job {task_id} not ready in time")


def peer_requests(
    urls: list[str],
    check: Check,
    jobs: int,
    threads: int,
    cpu_seconds: Callable[[], float],
) -> dict[str, Any]:
    """``jobs`` GETs over ``urls`` in turn, ``threads`` at a time: an image server that answers
    with the result (thumbor). ``cpu_seconds`` gives the server's CPU so far."""
    local = _Sessions(None)

    def one(index: int) -> tuple[bytes, float, float]:
        started = time.perf_counter()
        answer = _expect(local.session.get(urls[index % len(urls)], timeout=60), "GET")
        return answer.content, started, time.perf_counter()

    server_before, client_before = cpu_seconds(), time.process_time()
    started = time.perf_counter()
    spans = _run_clients(one, jobs, threads)
    wall = time.perf_counter() - started
    cpu = {
        "server": 1000 * (cpu_seconds() - server_before) / jobs,
        "client": 1000 * (time.process_time() - client_before) / jobs,
    }
    _verify(spans, check)
    return {
        "threads": threads,
        **rates([(started, done) for _, started, done in spans], "requests_per_s"),
        "cpu_ms_per_request": cpu,
        "cpu_share": sum(cpu.values()) * jobs / 1000 / wall,
    }


Job = Callable[[int], tuple[bytes, float, float]]  # job N: its result, start and end


def _run_clients(one: Job, jobs: int, threads: int) -> Spans:
    with ThreadPoolExecutor(threads, "client") as pool:
        return list(pool.map(one, range(jobs)))


def _expect(response: requests.Response, what: str) -> requests.Response:
    if response.status_code != 200:
        raise BenchError(f"{what}: {response.status_code} {response.text[:200]}")
    return response


def _verify(spans: Spans, check: Check) -> None:
    """Checking the results is the benchmark's work, not the system's: after the clock stops."""
    wrong = {n: problem for n, (data, _, _) in enumerate(spans) if (problem := check(n, data))}
    if wrong:
        first = dict(list(wrong.items())[:5])
        raise BenchError(f"{len(wrong)} of {len(spans)} results wrong, e.g. {first}")


def overhead(cpu_ms_per_job: dict[str, float], processing_ms: float) -> dict[str, float]:
    """What the job machinery costs per job, per role: all CPU but the benchmark client's,
    minus the processing itself (``processing_ms`` of the worker's)."""
    roles = {role: ms for role, ms in cpu_ms_per_job.items() if role != "client"}
    roles["worker"] = roles.get("worker", 0.0) - processing_ms
    return {**roles, "total": sum(roles.values())}


def large_image(
    system: BenchedUp, data: bytes, op: str, longest_side: int, timeout: float
) -> dict[str, Any]:
    """One large image through the system; the peak RSS (VmHWM) of the worker's loops."""
    loops = system.worker_loop_pids()
    before = max(memory_kib(pid)["VmHWM"] for pid in loops)

    def check(_: int, result: bytes) -> str | None:
        return thumbnail_problem(result, longest_side)

    figure = client_jobs(system, [data], check, 1, 1, Poll(wait=30), timeout, op=op)
    after = max(memory_kib(pid)["VmHWM"] for pid in loops)
    return {
        "image_mb": len(data) / 1e6,
        "op": op,
        "seconds": figure["seconds"],
        "loops": len(loops),
        "peak_rss_before_mb": before / 1024,
        "peak_rss_mb": after / 1024,
        "worker_stage_ms": figure["worker_stage_ms"],
    }


# ---------------------------------------------------------------------------------------------
# Idle latency


def idle_latency(system: BenchedUp, image: bytes, repeats: int) -> dict[str, Any]:
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


def memory(system: BenchedUp, size: int, timeout: float = 300.0) -> dict[str, Any]:
    """Peak RSS growth of the master and the storage while ``size`` bytes are uploaded."""
    pids = system.role_pids()
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


def _wait_finished(system: BenchedUp, task_id: str, timeout: float) -> str:
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


class _DatabaseSessions(_Sessions):
    """A session per thread, each thread pinned to one of the databases, in turn."""

    _next = itertools.count()

    def __init__(self, token: str | None, base_urls: Sequence[str]) -> None:
        super().__init__(token)
        self.base_url = base_urls[next(self._next) % len(base_urls)]


def database(base_urls: Sequence[str], token: str, tasks: int, concurrency: int) -> dict[str, Any]:
    """Create, claim and finish ``tasks`` tasks with ``concurrency`` clients, phase by phase;
    the clients spread over the database processes ``base_urls`` (replicas of one store)."""
    local = _DatabaseSessions(token, base_urls)

    def post(path: str, **params: Any) -> requests.Response:
        response = local.session.post(f"{local.base_url}{path}", params=params, timeout=30)
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
        "processes": len(base_urls),
        "tasks": tasks,
        "creates_per_s": tasks / (created - started),
        "claims_per_s": tasks / (claimed - created),
        "finishes_per_s": tasks / (finished - claimed),
        # a job's whole life at the database: create, enqueue, claim, finish
        "jobs_per_s": tasks / (finished - started),
    }
