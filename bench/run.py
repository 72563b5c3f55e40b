#!/usr/bin/env python3
"""Darkroom's benchmark: the whole system under ``darkroom up``, against the worker's own bound
and against thumbor, a real peer.

    python bench/run.py                      # the full run; figures in docs/benchmarks.md
    python bench/run.py --quick              # tiny counts, for CI: proves it runs, measures nothing
    python bench/run.py --only thumbnails    # one workload (or several, comma-separated)

It starts ``darkroom up`` itself (free ports, a temporary data folder, this checkout's code) and
measures, in one run, the workloads of issue 12 at 2 worker loops:

- thumbnails: 40 photo-like 2048x1536 JPEGs fitted in 512x512, JPEG q80, 80 jobs by 4 client
  threads (``/new?op=``, ``/isReady?wait=30``, ``/get``), side by side with thumbor 7.8 (Pillow
  engine, file loader, no storage, ``--processes 2``), installed from PyPI into a virtual
  environment of its own (``~/.cache/darkroom-bench``) and started by the benchmark;
- polling clients, as the seed's: 200 small PNGs by 8 threads asking ``/isReady`` every 20 ms,
  40 photo-like PNGs by 4 threads every 50 ms, against the bound (``process_image`` in as many
  processes, no HTTP, right before and right after);
- job overhead: CPU per job of every role minus the processing itself;
- large: a 50-megapixel JPEG thumbnailed, the worker loops' peak RSS;

and, as before, for each worker count: the long-poll client (upload everything, follow the
oldest job with long polls) against the bound, idle latency, master and storage RSS while a
large upload streams through, and the database alone.

Settings for the system under test are ``DARKROOM_*`` variables, passed on (e.g.
``DARKROOM_WORKER_MODE=thread``). Every load loop is bounded in count and time and talks to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

SERVICES = Path(__file__).resolve().parent.parent / "services"
if "--services" in sys.argv:  # another copy of the code, e.g. before a change
    SERVICES = Path(sys.argv[sys.argv.index("--services") + 1]).resolve()
# Benchmark this checkout (or --services), not an installed copy; the harness is this checkout's.
sys.path[:0] = [str(SERVICES), str(Path(__file__).resolve().parent.parent)]

import images  # noqa: E402
import peer  # noqa: E402
import workloads  # noqa: E402
from harness import postgres  # noqa: E402
from harness.proc import tree_cpu_seconds  # noqa: E402
from report import ISSUE_WORKERS, report_jobs, report_overhead, say, summary  # noqa: E402
from system import BenchedUp, StandaloneDatabase  # noqa: E402

WORKLOADS = ("thumbnails", "small", "photos", "large", "longpoll", "idle", "upload", "database")
ISSUE_WORKLOADS = {"thumbnails", "small", "photos", "large"}
THUMBNAIL = {"op": "resize:512x512,jpeg:80", "side": 512, "quality": 80, "threads": 4}
LARGE_OP = "thumbnail:512,jpeg:80"
POLLING = {  # the seed's clients: N threads, each asking /isReady every S seconds
    "small": workloads.Poll(interval=0.020),
    "photo": workloads.Poll(interval=0.050),
}
POLLING_THREADS = {"small": 8, "photo": 4}


def _make(job: tuple[str, int]) -> tuple[bytes, str]:
    kind, seed = job
    return (images.camera(seed), "") if kind == "camera" else images.make(kind, seed)


SEEDS = {"small": 0, "photo": 1000, "camera": 2000}  # the large JPEG's is 3000


def make_images(kind: str, count: int, folder: Path) -> tuple[list[Path], list[str]]:
    """``count`` images of ``kind`` (small, photo: PNG; camera: JPEG) in ``folder``/``kind``."""
    folder = folder / kind
    folder.mkdir(exist_ok=True)
    jobs = [(kind, SEEDS[kind] + n) for n in range(count)]
    with multiprocessing.get_context("spawn").Pool(min(count, os.cpu_count() or 1)) as pool:
        made = pool.map(_make, jobs, chunksize=1)
    suffix = "jpg" if kind == "camera" else "png"
    paths = []
    for n, (data, _) in enumerate(made):
        path = folder / f"{kind}-{n:03d}.{suffix}"
        path.write_bytes(data)
        paths.append(path)
    return paths, [digest for _, digest in made]


def make_large(size: tuple[int, int]) -> bytes:
    """The large JPEG, made in a process of its own (it needs about 1 GB on the way)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(images.camera, (3000, size))


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (CI): no real figures")
    parser.add_argument("--only", help=f"workloads to run, comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--workers", help="worker process counts of the long-poll runs, e.g. 1,2,4")
    parser.add_argument("--photos", type=int, help="photo-like 1600x1200 images (40)")
    parser.add_argument("--smalls", type=int, help="small 64x64 images (200)")
    parser.add_argument("--thumbnails", type=int, help="photo-like 2048x1536 JPEGs (40)")
    parser.add_argument("--thumbnail-jobs", type=int, help="thumbnail jobs over them (80)")
    parser.add_argument("--large-size", help="the large JPEG's size (8660x5773: 50 megapixels)")
    parser.add_argument("--no-peer", action="store_true", help="leave thumbor out")
    parser.add_argument(
        "--storage-api",
        action="store_true",
        help="the master and worker reach the storage through its HTTP API, not on its volume"
        " (darkroom up's default, DARKROOM_STORAGE_VOLUME)",
    )
    parser.add_argument(
        "--database-api",
        action="store_true",
        help="the master and worker call the database's HTTP API, not its task file"
        " (darkroom up's default, DARKROOM_DATABASE_DIRECT)",
    )
    parser.add_argument("--idle-repeats", type=int, help="idle latency samples (20)")
    parser.add_argument("--upload-mb", type=int, help="size of the memory test's upload (200)")
    parser.add_argument("--db-tasks", type=int, help="tasks per database run (1000)")
    parser.add_argument("--db-concurrency", help="database clients, e.g. 1,4,16")
    parser.add_argument("--timeout", type=float, help="seconds any one phase may take (900)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    parser.add_argument("--services", type=Path, help="the code to run (default: this checkout)")
    args = parser.parse_args(argv)
    full = {
        "workers": "1,2,4",
        "photos": 40,
        "smalls": 200,
        "thumbnails": 40,
        "thumbnail_jobs": 80,
        "large_size": "x".join(map(str, images.LARGE_SIZE)),
        "idle_repeats": 20,
        "upload_mb": 200,
        "db_tasks": 1000,
        "db_concurrency": "1,4,16",
        "timeout": 900.0,
    }
    quick = {
        "workers": "2",
        "photos": 2,
        "smalls": 20,
        "thumbnails": 4,
        "thumbnail_jobs": 8,
        "large_size": "x".join(map(str, images.CAMERA_SIZE)),
        "idle_repeats": 3,
        "upload_mb": 20,
        "db_tasks": 50,
        "db_concurrency": "4",
        "timeout": 120.0,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.workers = [int(n) for n in args.workers.split(",")]
    args.db_concurrency = [int(n) for n in args.db_concurrency.split(",")]
    width, _, height = args.large_size.partition("x")
    args.large_size = (int(width), int(height))
    args.only = set(args.only.split(",")) if args.only else set(WORKLOADS)
    if unknown := args.only - set(WORKLOADS):
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}: choose from {WORKLOADS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    work = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    results: dict[str, Any] = {"machine": machine(), "settings": settings(args)}
    say(f"Darkroom benchmark{' (quick: tiny counts, not figures)' if args.quick else ''}")
    say(f"  machine: {results['machine']}")
    say(f"  system settings: {results['settings']}")
    say(f"  work folder: {work}")
    results["load_average_start"] = load_average()
    say(f"  load average at start: {results['load_average_start']} (others share the CPUs)")
    try:
        run(args, work, results)
        results["load_average_end"] = load_average()
        say(f"load average at the end: {results['load_average_end']}")
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from PIL import __version__ as pillow

    return (
        f"{os.cpu_count()} CPUs, {memory_gib:.0f} GiB, {platform.platform(terse=True)}, "
        f"Python {platform.python_version()}, Pillow {pillow}"
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    passed = {k: v for k, v in os.environ.items() if k.startswith("DARKROOM_")}
    return {**passed, "workers": args.workers, "code": str(SERVICES)}


def run(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    started = time.monotonic()
    only = args.only
    sets = make_sets(args, work)
    if "camera" in sets:
        results["peer"] = measure_peer(args, work, sets["camera"][0])
    counts = set(args.workers) if only & {"longpoll", "idle", "upload"} else set()
    if only & ISSUE_WORKLOADS:
        counts.add(ISSUE_WORKERS)
    idle_on = min(args.workers, key=lambda n: abs(n - (os.cpu_count() or 1)))
    env = {"DARKROOM_MAX_UPLOAD_BYTES": str((args.upload_mb + 16) * 1024 * 1024)}
    if args.storage_api:
        env["DARKROOM_STORAGE_VOLUME"] = ""  # empty: through the storage's API
    access = "through its API" if args.storage_api else "on its volume"
    if args.database_api:
        env["DARKROOM_DATABASE_DIRECT"] = "false"
    tasks = "through its API" if args.database_api else "on its file"
    for workers in sorted(counts):
        say(
            f"\ndarkroom up --workers {workers} (the storage's images reached {access},"
            f" the database's tasks {tasks})"
        )
        with BenchedUp(SERVICES, work, workers, env) as system:
            system.wait_workers_idle()
            if workers == ISSUE_WORKERS:
                issue_workloads(system, args, sets, results)
            if workers == idle_on:
                if "upload" in only:
                    results["memory"] = measure_memory(system, args)
                if "idle" in only and "small" in sets:
                    results["idle"] = measure_idle(system, args, sets["small"][0][0])
            if "longpoll" in only and workers in args.workers:
                long_polls(system, sets, results, args.timeout)
    if "database" in only:
        results["database"] = measure_database(args, work)
    results["seconds"] = time.monotonic() - started
    summary(args, results)


ImageSets = dict[str, tuple[list[Path], list[str]]]  # kind: the files and their results' digests


def make_sets(args: argparse.Namespace, work: Path) -> ImageSets:
    """The image sets the chosen workloads need; a count of 0 leaves a set out."""
    needed = {
        "small": args.smalls if args.only & {"small", "longpoll", "idle"} else 0,
        "photo": args.photos if args.only & {"photos", "longpoll"} else 0,
        "camera": args.thumbnails if "thumbnails" in args.only else 0,
    }
    say("\nmaking " + ", ".join(f"{n} {kind}" for kind, n in needed.items() if n) + " images ...")
    sets = {kind: make_images(kind, count, work) for kind, count in needed.items() if count}
    sizes = {kind: sum(p.stat().st_size for p in paths) for kind, (paths, _) in sets.items()}
    say("  " + ", ".join(f"{kind} set: {size / 1e6:.1f} MB" for kind, size in sizes.items()))
    return sets


def issue_workloads(
    system: BenchedUp,
    args: argparse.Namespace,
    sets: ImageSets,
    results: dict[str, Any],
) -> None:
    """Issue 12's workloads, the large image first: its loops' peak RSS starts fresh."""
    if "large" in args.only:
        results["large"] = measure_large(system, args)
    if "camera" in sets:
        results["thumbnails"] = measure_thumbnails(system, args, sets["camera"][0])
    for kind, workload in (("small", "small"), ("photo", "photos")):
        if workload in args.only and kind in sets:
            paths, digests = sets[kind]
            bound, figure = against_bound(
                kind, paths, system, partial(polling, system, args, kind, paths, digests)
            )
            results.setdefault("polling", {})[kind] = {"bound": bound, **figure}


def polling(
    system: BenchedUp, args: argparse.Namespace, kind: str, paths: list[Path], digests: list[str]
) -> dict[str, Any]:
    def check(n: int, data: bytes) -> str | None:
        return None if images.result_digest(data) == digests[n % len(digests)] else "wrong pixels"

    data = [path.read_bytes() for path in paths]
    poll, threads = POLLING[kind], POLLING_THREADS[kind]
    figure = workloads.client_jobs(system, data, check, len(data), threads, poll, args.timeout)
    report_jobs(f"{kind} x{len(data)}, {threads} threads {poll.text}", figure)
    return figure


def long_polls(system: BenchedUp, sets: ImageSets, results: dict[str, Any], timeout: float) -> None:
    """The long-poll client (upload everything at once, follow the oldest job) per image set."""
    for kind in ("small", "photo"):
        if kind in sets:
            paths, digests = sets[kind]
            run_once = partial(long_poll, system, kind, paths, digests, timeout)
            bound, figure = against_bound(kind, paths, system, run_once)
            results.setdefault("bound", {}).setdefault(kind, {})[system.workers] = bound
            results.setdefault("e2e", {}).setdefault(kind, {})[system.workers] = figure


def long_poll(
    system: BenchedUp, kind: str, paths: list[Path], digests: list[str], timeout: float
) -> dict[str, Any]:
    figure = workloads.end_to_end(system, [p.read_bytes() for p in paths], digests, timeout)
    report_jobs(f"{kind} x{len(paths)}, long polls", figure)
    return figure


def against_bound(
    kind: str, paths: list[Path], system: BenchedUp, run_once: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run between two measures of the bound, so that both see the same machine (its speed
    drifts by 10 % within minutes here); the system waits idle meanwhile."""
    before = measure_bound(kind, paths, system.workers, "before")
    figure = run_once()
    after = measure_bound(kind, paths, system.workers, "after")
    bound = {
        **before,
        "images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
        "cpu_ms_per_image": (before["cpu_ms_per_image"] + after["cpu_ms_per_image"]) / 2,
        "before": before,
        "after": after,
    }
    figure["vs_bound"] = figure["jobs_per_s"] / bound["images_per_s"]
    figure["overhead_ms"] = workloads.overhead(figure["cpu_ms_per_job"], bound["cpu_ms_per_image"])
    mean = bound["images_per_s"]
    say(f"      {figure['vs_bound']:.2f} x bound ({mean:.1f} images/s, mean of before and after)")
    report_overhead(figure["overhead_ms"], bound["cpu_ms_per_image"], figure)
    return bound, figure


def measure_peer(args: argparse.Namespace, work: Path, paths: list[Path]) -> dict[str, Any]:
    """thumbor over the same JPEGs with the same client threads, before any Darkroom runs."""
    venv = peer.cached()
    if args.no_peer:
        return skip_peer("--no-peer")
    if venv is None and args.quick:
        return skip_peer(f"--quick and no cached virtual environment in {peer.venv_dir()}")
    try:
        if venv is None:
            say(f"\ninstalling {peer.THUMBOR} from PyPI into {peer.venv_dir()} (once) ...")
            venv = peer.install(peer.venv_dir().parent / "thumbor-install.log")
        side, quality = THUMBNAIL["side"], THUMBNAIL["quality"]
        with peer.Thumbor(venv, paths[0].parent, work, ISSUE_WORKERS, quality) as server:
            pillow = server.pillow_version()
            say(f"\nthumbor ({peer.THUMBOR}, Pillow {pillow}) --processes {ISSUE_WORKERS}")
            urls = [server.fit_in(path.name, side, side, quality) for path in paths]
            figure = workloads.peer_requests(
                urls, thumbnail_check, args.thumbnail_jobs, THUMBNAIL["threads"], server.cpu_seconds
            )
            figure["pillow"] = pillow
    except peer.PeerUnavailable as exc:
        return skip_peer(f"cannot run it here: {exc}")
    cpu = figure["cpu_ms_per_request"]
    say(
        f"  thumbor thumbnails x{figure['jobs']}, {figure['threads']} threads:"
        f" {figure['requests_per_s']:7.1f} requests/s,"
        f" latency p50 {figure['latency_p50_s'] * 1000:.0f} ms"
        f" p95 {figure['latency_p95_s'] * 1000:.0f} ms, all {figure['verified']} verified"
    )
    say(f"      CPU ms per request: thumbor {cpu['server']:.1f}, client {cpu['client']:.1f}")
    return figure


def skip_peer(reason: str) -> dict[str, Any]:
    say(f"\nthumbor: skipped ({reason}); the thumbnail target is not measured")
    return {"skipped": reason}


def thumbnail_check(_: int, data: bytes) -> str | None:
    return images.thumbnail_problem(data, THUMBNAIL["side"])


def measure_thumbnails(
    system: BenchedUp, args: argparse.Namespace, paths: list[Path]
) -> dict[str, Any]:
    data = [path.read_bytes() for path in paths]
    threads, op = THUMBNAIL["threads"], THUMBNAIL["op"]
    poll = workloads.Poll(wait=30)
    figure = workloads.client_jobs(
        system, data, thumbnail_check, args.thumbnail_jobs, threads, poll, args.timeout, op=op
    )
    report_jobs(f"thumbnails x{args.thumbnail_jobs}, {threads} threads, op={op}", figure)
    # Darkroom's own processing of the same images, no HTTP: what the jobs could reach.
    bound = workloads.bound(paths, system.workers, op)
    say(
        f"  bound thumbnails x{len(paths)}: {bound['images_per_s']:7.1f} images/s in"
        f" {system.workers} processes ({bound['cpu_ms_per_image']:.1f} ms CPU per image)"
    )
    figure["bound"] = bound
    figure["overhead_ms"] = workloads.overhead(figure["cpu_ms_per_job"], bound["cpu_ms_per_image"])
    report_overhead(figure["overhead_ms"], bound["cpu_ms_per_image"], figure)
    return figure


def measure_large(system: BenchedUp, args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.large_size
    say(f"  making a {width}x{height} JPEG ({width * height / 1e6:.0f} megapixels) ...")
    data = make_large(args.large_size)
    figure = workloads.large_image(system, data, LARGE_OP, 512, args.timeout)
    figure["megapixels"] = width * height / 1e6
    say(
        f"  large {width}x{height} JPEG ({figure['image_mb']:.1f} MB), op={LARGE_OP}:"
        f" {figure['seconds']:.1f} s; worker loops' peak RSS (VmHWM)"
        f" {figure['peak_rss_before_mb']:.0f} MB before, {figure['peak_rss_mb']:.0f} MB after"
    )
    return figure


def measure_database(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The database alone on SQLite, then on PostgreSQL with 1 and 2 database processes (the
    clients spread over them) when PostgreSQL 15 is installed (harness/postgres.py)."""
    say("\nthe database alone (darkroom serve database, direct HTTP)")
    figures = []
    with StandaloneDatabase(SERVICES, work) as database:
        figures += _database_runs(args, "sqlite", [database], lambda: 0.0)
    if not postgres.available():
        say(f"  PostgreSQL: not measured, no {postgres.BIN_DIR}/initdb (apt-get postgresql)")
        return figures
    token = secrets.token_urlsafe(24)  # one for the replicas, as in a deployment
    with postgres.PostgresServer() as server:
        for processes in (1, 2):
            url = server.create_database(f"bench_{processes}")
            with contextlib.ExitStack() as stack:
                names = [f"database-pg{processes}-{n}" for n in range(processes)]
                replicas = [
                    stack.enter_context(StandaloneDatabase(SERVICES, work, url, name, token))
                    for name in names
                ]
                figures += _database_runs(args, "postgresql", replicas, server.cpu_seconds)
    return figures


def _database_runs(
    args: argparse.Namespace,
    store: str,
    replicas: list[StandaloneDatabase],
    server_cpu: Callable[[], float],
) -> list[dict[str, Any]]:
    """Each client count's run, with the CPU each job cost the database processes and the
    PostgreSQL server (``server_cpu``): the figure the machine's load changes least."""
    figures = []
    urls = [replica.url for replica in replicas]

    def cpu() -> tuple[float, float]:
        return sum(tree_cpu_seconds(r.launched.pid) for r in replicas if r.launched), server_cpu()

    for concurrency in args.db_concurrency:
        before = cpu()
        figure = workloads.database(urls, replicas[0].token, args.db_tasks, concurrency)
        after = cpu()
        figure["store"] = store
        figure["database_cpu_ms_per_job"] = 1000 * (after[0] - before[0]) / args.db_tasks
        figure["postgresql_cpu_ms_per_job"] = 1000 * (after[1] - before[1]) / args.db_tasks
        figures.append(figure)
        say(
            f"  {store:10} x{len(urls)}, {concurrency:2} clients, {args.db_tasks} tasks: "
            f"{figure['creates_per_s']:4.0f} creates/s (new + enqueue), "
            f"{figure['claims_per_s']:4.0f} claims/s, "
            f"{figure['finishes_per_s']:4.0f} finishes/s, "
            f"{figure['jobs_per_s']:4.0f} jobs/s (all four); CPU ms per job: database "
            f"{figure['database_cpu_ms_per_job']:.1f}, PostgreSQL "
            f"{figure['postgresql_cpu_ms_per_job']:.1f}"
        )
    return figures


def measure_bound(kind: str, paths: list[Path], workers: int, when: str) -> dict[str, Any]:
    """process_image over the images in ``workers`` processes, no HTTP (see workloads.bound)."""
    figure = workloads.bound(paths, workers)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in figure["stage_ms"].items())
    say(
        f"  bound {when:6} {kind:5} x{len(paths):<3}: {figure['images_per_s']:7.1f} images/s"
        f" in {workers} process(es) (ms per image: {stages})"
    )
    return figure


def measure_memory(system: BenchedUp, args: argparse.Namespace) -> dict[str, Any]:
    size = args.upload_mb * 1_000_000
    say(f"  memory: uploading {size / 1e6:.0f} MB (PNG header + filler) ...")
    figure = workloads.memory(system, size, timeout=args.timeout)
    for role in ("master", "storage"):
        m = figure[role]
        say(
            f"  memory {role:7}: RSS {m['rss_before_mb']:.1f} MB before, peak "
            f"{m['rss_peak_mb']:.1f} MB (growth {m['rss_growth_mb']:.1f} MB, "
            f"VmHWM growth {m['hwm_growth_mb']:.1f} MB) in {figure['upload_seconds']:.1f} s"
        )
    return figure


def measure_idle(system: BenchedUp, args: argparse.Namespace, first: Path) -> dict[str, Any]:
    figure = workloads.idle_latency(system, first.read_bytes(), args.idle_repeats)
    say(
        f"  idle latency (upload to ready, x{figure['repeats']}): p50 {figure['p50_ms']:.0f} ms,"
        f" p95 {figure['p95_ms']:.0f} ms, min {figure['min_ms']:.0f} ms"
    )
    return figure


if __name__ == "__main__":
    sys.exit(main())
