"""Chaos against a running ``darkroom up``: jobs go in while processes are killed at random.

Used by ``tests/chaos/test_chaos.py`` (a short run in CI) and ``bench/chaos.py`` (a long one).
One run: start ``darkroom up`` with short leases; submit jobs (a few planted corrupt images among
them) with a client that retries through outages; meanwhile kill worker loops, whole workers
and the database, storage, master and registry (SIGKILL, now and then SIGTERM), one at a time at
random moments, and check the supervisor brings each back; then let the system settle and check
every promise:

* every job the client got an id for is still known (the database lost no committed task) and
  is finished, or failed with a reason when it was corrupt;
* every result is the red/green swap of its image, pixel by pixel;
* a result downloaded twice is the same both times (no job finished twice differently) and a
  finished job never goes back;
* no temporary file and no file that belongs to no task is left in the data directory;
* every killed process came back.

Work done twice (a finish the database refused: the task was finished already, or its lease
was lost to a kill) is counted from the database's ``darkroom_finishes_refused_total``, scraped
through the run: expected after kills, reported, not a broken promise. Under ``darkroom up``
the worker loops finish on the task file themselves (DARKROOM_DATABASE_DIRECT), so their
refused finishes are not in it: the figure counts only finishes made through the database's API.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import psutil  # the processes seen, for telling a reused pid apart
import requests

from harness.environment import ROLES
from harness.images import decode, png_bytes, same_pixels, swapped
from harness.launch import answers as url_answers
from harness.launch import kill
from harness.metrics import CounterTotal, samples
from harness.postgres import PostgresServer
from harness.proc import alive, identity
from harness.replicated import HALVES, ReplicatedDarkroom
from harness.up import DarkroomUp

# What the chaos kills, and how often relative to each other.
TARGETS = {"loop": 4, "worker": 1, "database": 2, "storage": 2, "master": 2, "registry": 1}
TEMP_PREFIXES = (".upload-", ".registry-")
# The folder of the sockets the processes on the task file wake each other with.
WAKEUPS = "tasks.sqlite3.wakeups"
# Files `darkroom up` keeps in its data directory besides the image folders.
EXPECTED_ROOT_FILES = re.compile(
    r"registry\.json|tasks\.sqlite3(-wal|-shm|-journal)?|internal-token"
)
FINAL = {"finished", "failed"}
REFUSED_FINISHES = "darkroom_finishes_refused_total"
VERIFY_SECONDS = 10.0  # kept at the end of a run for checking the results
MAX_PROBLEMS_SHOWN = 30

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ChaosSettings:
    jobs: int = 200
    corrupt: int = 5
    seconds: float = 120.0  # the whole run, start-up to verdict
    seed: int = 0
    workers: int = 2  # task loops
    submitters: int = 4  # client threads uploading at once
    kill_interval: tuple[float, float] = (1.0, 3.0)  # seconds between kills, uniform
    # Share of ``seconds`` with kills going on; jobs are submitted during the first part of it.
    chaos_share: float = 0.65
    submit_share: float = 0.7


@dataclasses.dataclass
class Job:
    image: bytes
    corrupt: bool
    task_id: str | None = None
    attempts_to_submit: int = 0


@dataclasses.dataclass
class Report:
    seed: int
    submitted: int = 0
    corrupt_submitted: int = 0
    finished: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    wrong: int = 0
    reprocessed: int = 0  # claimed more than once (redone after a kill): expected, not an error
    finishes_refused: int = 0  # finishes the database refused: work done twice, after kills
    unknown_tasks: int = 0  # tasks whose upload answer the client never got
    upload_retries: int = 0
    upload_outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    server_errors: int = 0  # 500s seen by the client (502/503 during outages are fine)
    kills: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    restarts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    leftovers: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0

    def problems(self) -> list[str]:
        found = list(self.errors)
        if self.lost:
            found.append(f"{self.lost} jobs lost")
        if self.duplicates:
            found.append(f"{self.duplicates} jobs finished twice with different results")
        if self.wrong:
            found.append(f"{self.wrong} jobs with a wrong outcome")
        if self.server_errors:
            found.append(f"{self.server_errors} answers were 500 Internal Server Error")
        found += [f"left in the data directory: {path}" for path in self.leftovers]
        for target, killed in sorted(self.kills.items()):
            if self.restarts[target] < killed:
                found.append(f"{target}: killed {killed} times, came back {self.restarts[target]}")
        return found

    def summary(self) -> str:
        kills = ", ".join(f"{target} {n}" for target, n in sorted(self.kills.items())) or "none"
        lines = [
            f"chaos seed={self.seed} elapsed={self.elapsed:.1f}s",
            f"  submitted {self.submitted} (corrupt {self.corrupt_submitted}),"
            f" finished {self.finished}, failed {self.failed}, lost {self.lost},"
            f" duplicates {self.duplicates}, wrong {self.wrong}",
            f"  restarts survived {sum(self.restarts.values())} (kills: {kills})",
            f"  redone after a kill {self.reprocessed}, finishes refused"
            f" {self.finishes_refused}, unknown tasks {self.unknown_tasks},"
            f" upload retries {self.upload_retries}, 500s {self.server_errors}",
            f"  upload answers: {dict(self.upload_outcomes)}",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        problems = collections.Counter(self.problems())
        for problem, count in list(problems.items())[:MAX_PROBLEMS_SHOWN]:
            lines.append(f"  PROBLEM: {problem}" + (f" (x{count})" if count > 1 else ""))
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems")
        return "\n".join(lines)


# -- processes ----------------------------------------------------------------------------


class Darkroom(DarkroomUp):
    """``darkroom up`` as a child process, with ways to find and kill what it runs."""

    def __init__(self, data_dir: Path, log_path: Path, workers: int, **settings: str) -> None:
        super().__init__(data_dir, log_path, workers, **settings)
        # every process of the tree, to be sure none outlives us
        self.seen: dict[int, psutil.Process] = {}
        self.refused_finishes = CounterTotal()

    def start(self, timeout: float) -> None:
        self.launch().wait_ready(
            lambda: self.all_ready() and len(self.loop_pids()) == self.workers, timeout, 0.2
        )

    def answers(self, role: str, path: str = "/healthz") -> bool:
        return url_answers(self.url(role, path), timeout=2)

    def all_ready(self) -> bool:
        return all(self.answers(role, "/readyz") for role in ROLES)

    def role_pid(self, role: str) -> int | None:
        pid = self.role_pids().get(role)
        if pid is not None:
            self._remember(pid)
        return pid

    def loop_pids(self) -> list[int]:
        loops = super().loop_pids()
        for pid in loops:
            self._remember(pid)
        return loops

    def _remember(self, pid: int) -> None:
        if pid not in self.seen and (process := identity(pid)) is not None:
            self.seen[pid] = process

    def count_refused_finishes(self) -> None:
        """Add what the database refused since the last look: before each kill of it, and at
        the end (its counter starts from zero with each process)."""
        pid = self.role_pid("database")
        try:
            answer = requests.get(self.url("database", "/metrics"), headers=self.auth, timeout=2)
        except requests.RequestException:
            return
        if answer.status_code == 200:
            found = samples(answer.text)
            self.refused_finishes.add(found[(REFUSED_FINISHES, frozenset())], source=pid)

    def stop_and_reap(self) -> list[int]:
        """Stop gracefully; kill and return the pids of processes that outlived it."""
        if self.launched is None:
            return []
        self.loop_pids()
        self.stop(60)
        time.sleep(0.5)
        survivors = [pid for pid, process in self.seen.items() if alive(process)]
        for pid in survivors:
            kill(pid)
        return survivors


# -- the chaos ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    target: str
    old_pids: set[int]
    killed_at: float


class ChaosMonkey(threading.Thread):
    """Kills a random target every so often; counts the kills and the comebacks."""

    def __init__(self, system: Darkroom, rng: random.Random, interval: tuple[float, float]):
        super().__init__(name="chaos", daemon=True)
        self._system = system
        self._rng = rng
        self._interval = interval
        self._halt = threading.Event()
        self._pending: list[_Pending] = []
        self._first_round = rng.sample(list(TARGETS), len(TARGETS))
        self.kills: collections.Counter = collections.Counter()
        self.terminations = 0  # kills that were SIGTERM
        self.restarts: collections.Counter = collections.Counter()
        self.restart_seconds: dict[str, list[float]] = collections.defaultdict(list)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        """One kill at a time: the next comes a random while after the last one is back.

        So a slow machine gets fewer kills, not a system that is never up.
        """
        next_kill = time.monotonic() + self._rng.uniform(*self._interval)
        while not self._halt.wait(0.1):
            if self._pending:
                self._check_comebacks()
                if not self._pending:
                    next_kill = time.monotonic() + self._rng.uniform(*self._interval)
            elif time.monotonic() >= next_kill:
                self._kill_something()
                next_kill = time.monotonic() + self._rng.uniform(*self._interval)

    def _kill_something(self) -> None:
        # Every target once, in a random order, before the weighted draws.
        if not self._first_round:
            target = self._rng.choices(list(TARGETS), list(TARGETS.values()))[0]
        else:
            target = self._first_round.pop()
        if target == "loop":
            loops = self._system.loop_pids()
            if len(loops) < self._system.workers:
                return
            victims = {self._rng.choice(loops)}
        else:
            pid = self._system.role_pid(target)
            if pid is None:
                self._first_round.append(target)
                return
            if target == "database":
                self._system.count_refused_finishes()  # its count dies with it
            # A whole worker dies as a container would: with its loops.
            victims = {pid, *(self._system.loop_pids() if target == "worker" else [])}
        old = set(victims)
        # Mostly SIGKILL; now and then a service is asked to stop, as a rolling update would.
        sig = signal.SIGTERM if target != "loop" and self._rng.random() < 0.2 else signal.SIGKILL
        if sig == signal.SIGTERM:
            victims = {pid}  # the worker stops its loops itself
            self.terminations += 1
        for pid in victims:
            kill(pid, sig)
        self.kills[target] += 1
        self._pending.append(_Pending(target, old, time.monotonic()))

    def _check_comebacks(self) -> None:
        for pending in list(self._pending):
            if self._came_back(pending):
                self._pending.remove(pending)
                self.restarts[pending.target] += 1
                self.restart_seconds[pending.target].append(time.monotonic() - pending.killed_at)

    def _came_back(self, pending: _Pending) -> bool:
        if pending.target == "loop":
            loops = set(self._system.loop_pids())
            return len(loops) == self._system.workers and not loops & pending.old_pids
        if pending.target == "worker":
            pid = self._system.role_pid("worker")
            loops = set(self._system.loop_pids())
            return (
                pid is not None
                and pid not in pending.old_pids
                and len(loops) == self._system.workers
                and not loops & pending.old_pids
                and self._system.answers("worker")
            )
        pid = self._system.role_pid(pending.target)
        return (
            pid is not None and pid not in pending.old_pids and self._system.answers(pending.target)
        )

    def wait_for_comebacks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._check_comebacks()
            time.sleep(0.1)


# -- the client ---------------------------------------------------------------------------


class System(Protocol):
    """What the client and the checks need of a system: ``Darkroom`` or ``ReplicatedDarkroom``."""

    data_dir: Path

    @property
    def auth(self) -> dict[str, str]: ...

    def url(self, role: str, path: str = "") -> str: ...


class Client:
    """Uploads with retries through outages; reads states and results."""

    def __init__(self, system: System, report: Report) -> None:
        self._system = system
        self._report = report
        self._lock = threading.Lock()

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self._report, field, getattr(self._report, field) + 1)

    def submit(self, job: Job, deadline: float) -> None:
        """Upload until an id comes back; connection errors and 5xx are retried."""
        delay = 0.05
        while time.monotonic() < deadline:
            job.attempts_to_submit += 1
            if job.attempts_to_submit > 1:
                self._count("upload_retries")
            try:
                url = self._system.url("master", "/new")
                answer = requests.post(url, data=job.image, timeout=15)
            except requests.RequestException as exc:
                answer = None
                outcome = type(exc).__name__
            else:
                outcome = str(answer.status_code)
            with self._lock:
                self._report.upload_outcomes[outcome] += 1
            if answer is not None and answer.status_code == 200:
                job.task_id = answer.text
                return
            if answer is not None and answer.status_code == 500:
                self._count("server_errors")
            if answer is not None and answer.status_code < 500:
                refused = f"upload refused: {answer.status_code} {answer.text}"
                with self._lock:
                    self._report.errors.append(refused)
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def states(self) -> dict[str, dict] | None:
        """Every task in the database (id -> record), or None while it cannot answer."""
        try:
            answer = requests.get(
                self._system.url("database", "/list"),
                params={"limit": 10_000},
                headers={**self._system.auth, "Accept": "application/json"},
                timeout=10,
            )
        except requests.RequestException:
            return None
        if answer.status_code != 200:
            if answer.status_code == 500:
                self._count("server_errors")
            return None
        return {task["id"]: task for task in answer.json()}

    def get(self, path: str, task_id: str) -> requests.Response | None:
        try:
            url = self._system.url("master", path)
            answer = requests.get(url, params={"id": task_id}, timeout=15)
        except requests.RequestException:
            return None
        if answer.status_code == 500:
            self._count("server_errors")
        return answer

    def result(self, task_id: str, deadline: float) -> bytes | None:
        """The finished result, asking again through outages until ``deadline``."""
        while time.monotonic() < deadline:
            answer = self.get("/get", task_id)
            if answer is not None and answer.status_code == 200:
                return answer.content
            time.sleep(0.2)
        return None


class ResultWatcher(threading.Thread):
    """Downloads each result as soon as its job is seen finished, to compare with later reads."""

    def __init__(self, client: Client, ids: Callable[[], set[str]]) -> None:
        super().__init__(name="watcher", daemon=True)
        self._client = client
        self._ids = ids
        self._halt = threading.Event()
        self.first_hash: dict[str, str] = {}
        self.finished_seen: set[str] = set()
        self.regressions: list[str] = []

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            states = self._client.states()
            if states is None:
                continue
            for task_id in self._ids():
                task = states.get(task_id)
                finished = task is not None and task["stateName"] == "finished"
                if task_id in self.finished_seen and task is not None and not finished:
                    self.regressions.append(f"{task_id} was finished, now {task['stateName']}")
                if finished and task_id not in self.first_hash:
                    self.finished_seen.add(task_id)
                    answer = self._client.get("/get", task_id)
                    if answer is not None and answer.status_code == 200:
                        self.first_hash[task_id] = hashlib.sha256(answer.content).hexdigest()


# -- one run ------------------------------------------------------------------------------


def make_jobs(settings: ChaosSettings, rng: random.Random) -> list[Job]:
    jobs = []
    for n in range(settings.jobs - settings.corrupt):
        size = (rng.randint(4, 48), rng.randint(4, 48))
        mode = rng.choice(["RGB", "RGBA"])
        jobs.append(Job(png_bytes(size, mode, seed=rng.randint(1, 1000) + n), corrupt=False))
    for n in range(settings.corrupt):
        whole = png_bytes((64, 64), "RGBA", seed=n + 1)
        jobs.append(Job(whole[: -rng.randint(30, 200)], corrupt=True))
    rng.shuffle(jobs)
    return jobs


class _Run(NamedTuple):
    """What every chaos run starts from: its seeded random source, its report, its clock and
    its jobs (made from the seed, so a failing run can be repeated)."""

    rng: random.Random
    report: Report
    started: float
    end: float
    jobs: list[Job]

    @classmethod
    def begin(cls, settings: ChaosSettings) -> _Run:
        rng = random.Random(settings.seed)
        report = Report(seed=settings.seed)
        started = time.monotonic()
        jobs = make_jobs(settings, rng)
        report.corrupt_submitted = sum(job.corrupt for job in jobs)
        return cls(rng, report, started, started + settings.seconds, jobs)


def run_chaos(settings: ChaosSettings, workdir: Path, log: Log = print) -> Report:
    if (workdir / "data").exists():
        raise ValueError(f"{workdir / 'data'} exists: a run needs a fresh data directory")
    rng, report, started, end, jobs = _Run.begin(settings)
    system = Darkroom(
        workdir / "data",
        workdir / "darkroom.log",
        settings.workers,
        lease_seconds="2",
        claim_wait_seconds="2",
        discovery_ttl_seconds="1",
        max_attempts="10",
        upload_timeout_seconds="15",
        http_timeout_seconds="10",
        log_level="INFO",
    )
    log(
        f"chaos: seed {settings.seed}, {settings.jobs} jobs, {settings.seconds:.0f} s, log in "
        f"{system.log_path}"
    )
    client = Client(system, report)
    try:
        system.start(timeout=min(60.0, settings.seconds / 3))
        chaos_end = time.monotonic() + (end - time.monotonic()) * settings.chaos_share
        monkey = ChaosMonkey(system, rng, settings.kill_interval)
        watcher = ResultWatcher(client, lambda: {job.task_id for job in jobs if job.task_id})
        monkey.start()
        watcher.start()
        _submit_all(client, jobs, settings, chaos_end, end)
        report.submitted = sum(job.task_id is not None for job in jobs)
        log(f"chaos: {report.submitted} jobs submitted after {time.monotonic() - started:.0f} s")
        time.sleep(max(0.0, chaos_end - time.monotonic()))
        monkey.stop()
        monkey.wait_for_comebacks(timeout=30)
        report.kills, report.restarts = monkey.kills, monkey.restarts
        comebacks = ", ".join(
            f"{target} {max(times):.1f}" for target, times in sorted(monkey.restart_seconds.items())
        )
        report.notes.append(f"longest comeback in seconds: {comebacks}")
        report.notes.append(f"{monkey.terminations} of the kills were SIGTERM, the rest SIGKILL")
        log(f"chaos: kills stopped at {time.monotonic() - started:.0f} s; settling")
        states = _settle(client, jobs, end - VERIFY_SECONDS)
        watcher.stop()
        # Checking gets its time even when a slow machine used up the rest.
        _verify(client, system, jobs, states, watcher, report, max(end, time.monotonic() + 30))
        system.count_refused_finishes()
        report.finishes_refused = round(system.refused_finishes.increase)
        if not system.refused_finishes.read:
            report.errors.append(f"the database's {REFUSED_FINISHES} could not be read")
    finally:
        survivors = system.stop_and_reap()
        if survivors:
            report.errors.append(f"processes outlived darkroom up: {sorted(survivors)}")
    report.leftovers += _temporary_files(system.data_dir)
    report.elapsed = time.monotonic() - started
    return report


def _submit_all(
    client: Client, jobs: list[Job], settings: ChaosSettings, chaos_end: float, end: float
) -> None:
    """Submit at a steady pace over the first part of the chaos, a few at a time."""
    spread = max(0.0, (chaos_end - time.monotonic()) * settings.submit_share)
    start = time.monotonic()
    gap = spread / max(len(jobs), 1)

    def submit(index: int) -> None:
        time.sleep(max(0.0, start + index * gap - time.monotonic()))
        client.submit(jobs[index], deadline=end - 20)

    with concurrent.futures.ThreadPoolExecutor(settings.submitters) as pool:
        list(pool.map(submit, range(len(jobs))))


def _settle(client: Client, jobs: list[Job], deadline: float) -> dict[str, dict]:
    """Wait until every known job (and every task nobody knows) is final, or ``deadline``."""
    ids = {job.task_id for job in jobs if job.task_id}
    states: dict[str, dict] = {}
    # past the deadline only while the database has not answered at all
    while time.monotonic() < deadline or (not states and time.monotonic() < deadline + 30):
        states = client.states() or states
        waiting = [i for i in ids if states.get(i, {}).get("stateName") not in FINAL]
        strays = [t for i, t in states.items() if i not in ids and t["stateName"] not in FINAL]
        if states and not waiting and not strays:
            break
        time.sleep(0.5)
    return states


def _verify(
    client: Client,
    system: System,
    jobs: list[Job],
    states: dict[str, dict],
    watcher: ResultWatcher,
    report: Report,
    end: float,
) -> None:
    ids = {job.task_id for job in jobs if job.task_id}
    report.errors += watcher.regressions
    latest = client.states()
    if latest is None:
        report.errors.append("the database did not answer /list at the end")
    states = latest or states
    for job in jobs:
        if job.task_id is None:
            report.errors.append("a job never got an id (upload kept failing until the deadline)")
            continue
        answer = client.get("/status", job.task_id)
        if answer is None or answer.status_code != 200:
            report.lost += 1
            status = "no answer" if answer is None else f"{answer.status_code} {answer.text}"
            report.errors.append(f"{job.task_id}: /status gave {status}")
            continue
        task = answer.json()
        if task["attempts"] > 1:
            report.reprocessed += 1
        if task["stateName"] == "finished":
            report.finished += 1
            _check_result(client, job, watcher, report, end)
        elif task["stateName"] == "failed":
            report.failed += 1
            if not job.corrupt:
                report.wrong += 1
                report.errors.append(f"{job.task_id}: a good image failed: {task['error']}")
            elif not task["error"]:
                report.wrong += 1
                report.errors.append(f"{job.task_id}: failed without a reason")
        else:
            report.lost += 1
            report.errors.append(f"{job.task_id}: still {task['stateName']} at the end")
    strays = {task_id: task for task_id, task in states.items() if task_id not in ids}
    report.unknown_tasks = len(strays)
    for task_id, task in strays.items():
        if task["stateName"] not in FINAL:
            report.errors.append(f"task {task_id} nobody knows is still {task['stateName']}")
    if strays:
        outcomes = collections.Counter(
            t["stateName"] + (f" ({t['error'][:40]}...)" if t["error"] else "")
            for t in strays.values()
        )
        report.notes.append(f"tasks the client never heard of: {dict(outcomes)}")
    report.leftovers += _orphan_files(system.data_dir, set(states))


def _check_result(
    client: Client, job: Job, watcher: ResultWatcher, report: Report, end: float
) -> None:
    assert job.task_id is not None
    if job.corrupt:
        report.wrong += 1
        report.errors.append(f"{job.task_id}: a corrupt image finished")
        return
    content = client.result(job.task_id, deadline=end)
    if content is None:
        report.lost += 1
        report.errors.append(f"{job.task_id}: finished but its result cannot be downloaded")
        return
    first = watcher.first_hash.get(job.task_id)
    if first is not None and first != hashlib.sha256(content).hexdigest():
        report.duplicates += 1
        report.errors.append(f"{job.task_id}: the result changed after it finished")
    try:
        right = same_pixels(decode(content), swapped(job.image))
    except Exception as exc:
        right = False
        report.errors.append(f"{job.task_id}: the result does not decode: {exc}")
    if not right:
        report.wrong += 1
        report.errors.append(f"{job.task_id}: the result is not the red/green swap")


def _temporary_files(data_dir: Path) -> list[str]:
    """Temporary files, and the wake-up sockets of the processes on the task file: after the
    stop, none (the last store to close removes those a killed process left)."""
    return [
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.name.startswith(TEMP_PREFIXES) or path.parent.name == WAKEUPS
    ]


def _orphan_files(data_dir: Path, task_ids: set[str]) -> list[str]:
    """Files in the image folders that belong to no task, and unexpected files anywhere."""
    orphans = []
    for path in data_dir.rglob("*"):
        relative = path.relative_to(data_dir)
        if path.name.startswith(TEMP_PREFIXES) or path.is_dir():
            continue  # temporary files are reported after the stop
        if relative.parts[0] in ("working", "finished") and len(relative.parts) == 2:
            # a result is ID.VERSION (one per lease that stored one), an upload ID
            if path.name.partition(".")[0] not in task_ids:
                orphans.append(f"{relative} (no such task)")
        elif relative.parts[0] == WAKEUPS and len(relative.parts) == 2:
            continue  # a running process's socket: reported if it outlives the stop
        elif len(relative.parts) != 1 or not EXPECTED_ROOT_FILES.fullmatch(path.name):
            orphans.append(f"{relative} (unexpected)")
    return orphans


# -- on PostgreSQL, replicated ------------------------------------------------------------

REPLICA_TARGETS = ("database", "storage", "postgresql")


class ReplicaMonkey(threading.Thread):
    """Kills one database or storage replica (SIGKILL) and starts it again, or crash-restarts
    PostgreSQL (``immediate``: no checkpoint, recovery from the WAL), one at a time."""

    def __init__(
        self,
        system: ReplicatedDarkroom,
        server: PostgresServer,
        rng: random.Random,
        interval: tuple[float, float],
    ) -> None:
        super().__init__(name="replica-chaos", daemon=True)
        self._system, self._server, self._rng, self._interval = system, server, rng, interval
        self._halt = threading.Event()
        self._first_round = rng.sample(REPLICA_TARGETS, len(REPLICA_TARGETS))
        self.kills: collections.Counter = collections.Counter()
        self.restarts: collections.Counter = collections.Counter()
        self.errors: list[str] = []

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.wait(self._rng.uniform(*self._interval)):
            target = self._first_round.pop() if self._first_round else None
            target = target or self._rng.choice(REPLICA_TARGETS)
            half = self._rng.choice(HALVES)
            self.kills[target] += 1
            try:
                if target == "postgresql":
                    self._server.restart("immediate")
                else:
                    self._system.kill(half, target)
                    self._halt.wait(0.3)  # down for a moment, as a rescheduled pod is
                    self._system.start(half, target)
            except Exception as exc:  # reported as a broken promise, not raised in a thread
                self.errors.append(f"{target} {half} did not come back: {exc}")
                return
            self.restarts[target] += 1


def run_replicated_chaos(
    settings: ChaosSettings, workdir: Path, server: PostgresServer, log: Log = print
) -> Report:
    """``run_chaos``'s promises on two database and two storage replicas sharing PostgreSQL
    and one data directory, while replicas are killed and PostgreSQL crash-restarts.

    Jobs go in and come out through half A; half B's worker claims through B's database and
    stores through B's storage. The finishes the database refused are not counted here (each
    replica counts its own).
    """
    rng, report, started, end, jobs = _Run.begin(settings)
    system = ReplicatedDarkroom(
        server.create_database(f"chaos_{settings.seed}"),
        workdir / "data",
        workdir,
        lease_seconds="2",
        claim_wait_seconds="2",
        max_attempts="10",
        upload_timeout_seconds="15",
        http_timeout_seconds="10",
        concurrency=str(settings.workers),
        log_level="INFO",
    )
    log(f"replicated chaos: seed {settings.seed}, {settings.jobs} jobs, logs in {workdir}")
    client = Client(system, report)
    try:
        system.start_all()
        chaos_end = time.monotonic() + (end - time.monotonic()) * settings.chaos_share
        monkey = ReplicaMonkey(system, server, rng, settings.kill_interval)
        watcher = ResultWatcher(client, lambda: {job.task_id for job in jobs if job.task_id})
        monkey.start()
        watcher.start()
        _submit_all(client, jobs, settings, chaos_end, end)
        report.submitted = sum(job.task_id is not None for job in jobs)
        time.sleep(max(0.0, chaos_end - time.monotonic()))
        monkey.stop()
        report.kills, report.restarts = monkey.kills, monkey.restarts
        report.errors += monkey.errors
        report.notes.append("finishes refused: not counted here (each replica counts its own)")
        log(f"replicated chaos: kills stopped at {time.monotonic() - started:.0f} s; settling")
        states = _settle(client, jobs, end - VERIFY_SECONDS)
        watcher.stop()
        _verify(client, system, jobs, states, watcher, report, max(end, time.monotonic() + 30))
    finally:
        system.stop_all()
    report.leftovers += _temporary_files(system.data_dir)
    report.elapsed = time.monotonic() - started
    return report
