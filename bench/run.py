#!/usr/bin/env python3
"""Darkroom's benchmark: the whole system under ``darkroom up`` against the worker's own bound.

    python bench/run.py              # the full run (several minutes); figures in docs/benchmarks.md
    python bench/run.py --quick      # tiny counts, for CI: proves it runs, measures nothing

It starts ``darkroom up`` itself (free ports, a temporary data folder, this checkout's code) for
each worker count and measures, in one run:

- the bound: ``process_image`` (default settings) over the same images with as many processes,
  no HTTP;
- end to end: upload, wait, download and check the pixels of 200 small and 40 photo-like images;
- idle latency: one small image on an idle system, upload to ready;
- memory: master and storage RSS while a large upload streams through;
- the database alone: creates, claims and finishes per second with concurrent clients.

Settings for the system under test are ``DARKROOM_*`` variables, passed on (e.g.
``DARKROOM_WORKER_MODE=thread``, ``DARKROOM_PNG_COMPRESS_LEVEL=6``). Every load loop is bounded
in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVICES = Path(__file__).resolve().parent.parent / "services"
if "--services" in sys.argv:  # another copy of the code, e.g. before a change
    SERVICES = Path(sys.argv[sys.argv.index("--services") + 1]).resolve()
sys.path.insert(0, str(SERVICES))  # benchmark this checkout, not an installed copy

import images  # noqa: E402
import workloads  # noqa: E402
from system import DarkroomUp, StandaloneDatabase  # noqa: E402

# The original Go system on a 2-core machine (see docs/benchmarks.md).
GO = {"photo": 1.9, "small": 70.0, "small_awake": 165.0, "idle_ms": 500.0}
CPU_ROLES = ("master", "database", "storage", "registry", "worker", "frontend", "client")
TARGETS = {
    "photo_vs_bound": 0.85,
    "photo_jobs_per_s": 2.5 * GO["photo"],
    "small_jobs_per_s": 150.0,
    "idle_p50_ms": 100.0,
    "rss_growth_mb": 30.0,
}


def say(text: str = "") -> None:
    print(text, flush=True)


def _make(job: tuple[str, int]) -> tuple[bytes, str]:
    return images.make(*job)


def make_images(kind: str, count: int, folder: Path) -> tuple[list[Path], list[str]]:
    seeds = [(kind, 1000 * (kind == "photo") + n) for n in range(count)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        made = pool.map(_make, seeds, chunksize=1)
    paths = []
    for n, (data, _) in enumerate(made):
        path = folder / f"{kind}-{n:03d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths, [digest for _, digest in made]


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (CI): no real figures")
    parser.add_argument("--workers", help="worker process counts, e.g. 1,2,4")
    parser.add_argument("--photos", type=int, help="photo-like 1600x1200 images (40)")
    parser.add_argument("--smalls", type=int, help="small 64x64 images (200)")
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
    say(f"\nmaking {args.smalls} small and {args.photos} photo-like images ...")
    counts = {"small": args.smalls, "photo": args.photos}
    # A count of 0 leaves that set out (e.g. --photos 0 to look at small images only).
    sets = {kind: make_images(kind, count, work) for kind, count in counts.items() if count}
    sizes = {kind: sum(p.stat().st_size for p in paths) for kind, (paths, _) in sets.items()}
    say("  " + ", ".join(f"{kind} set: {size / 1e6:.1f} MB" for kind, size in sizes.items()))

    results["bound"] = {kind: {} for kind in sets}
    results["e2e"] = {kind: {} for kind in sets}
    idle_on = min(args.workers, key=lambda n: abs(n - (os.cpu_count() or 1)))
    env = {"DARKROOM_MAX_UPLOAD_BYTES": str((args.upload_mb + 16) * 1024 * 1024)}
    for workers in args.workers:
        say(f"\ndarkroom up --workers {workers}")
        with DarkroomUp(SERVICES, work, workers, env) as system:
            system.wait_workers_idle()
            if workers == idle_on and "small" in sets:
                results["memory"] = measure_memory(system, args)
                results["idle"] = measure_idle(system, args, sets["small"][0][0])
            for kind, (paths, digests) in sets.items():
                # The bound right before and right after, so that both see the same machine
                # (its speed drifts by 10 % within minutes here); the system waits idle meanwhile.
                before = measure_bound(kind, paths, workers, "before")
                data = [p.read_bytes() for p in paths]
                figure = workloads.end_to_end(system, data, digests, args.timeout)
                after = measure_bound(kind, paths, workers, "after")
                bound = (before["images_per_s"] + after["images_per_s"]) / 2
                results["bound"][kind][workers] = {
                    **before,
                    "images_per_s": bound,
                    "before": before,
                    "after": after,
                }
                results["e2e"][kind][workers] = figure
                figure["vs_bound"] = figure["jobs_per_s"] / bound
                steady = figure.get("steady_jobs_per_s")
                stages = ", ".join(f"{k} {v:.1f}" for k, v in figure["worker_stage_ms"].items())
                say(
                    f"  end to end {kind:5} x{len(paths):<3}: {figure['jobs_per_s']:7.1f} jobs/s"
                    + (f" (steady {steady:.1f})" if steady else "")
                    + f", latency p50 {figure['latency_p50_s'] * 1000:.0f} ms"
                    f" p95 {figure['latency_p95_s'] * 1000:.0f} ms,"
                    f" {figure['vs_bound']:.2f} x bound, all {figure['verified']} verified"
                )
                say(f"      worker busy {figure['worker_busy_fraction']:.0%}; ms per job: {stages}")
                cpu = figure["cpu_ms_per_job"]
                say(
                    "      CPU ms per job: "
                    + ", ".join(f"{role} {cpu[role]:.1f}" for role in CPU_ROLES if role in cpu)
                    + f"; total {sum(cpu.values()):.1f} ({figure['cpu_share']:.2f} cores busy)"
                )

    say("\nthe database alone (darkroom serve database, direct HTTP)")
    results["database"] = []
    with StandaloneDatabase(SERVICES, work) as database:
        for concurrency in args.db_concurrency:
            figure = workloads.database(database.url, database.token, args.db_tasks, concurrency)
            results["database"].append(figure)
            say(
                f"  {concurrency:2} clients, {args.db_tasks} tasks: "
                f"{figure['creates_per_s']:6.0f} creates/s (new + enqueue), "
                f"{figure['claims_per_s']:6.0f} claims/s, "
                f"{figure['finishes_per_s']:6.0f} finishes/s"
            )
    results["seconds"] = time.monotonic() - started
    summary(args, results)


def measure_bound(kind: str, paths: list[Path], workers: int, when: str) -> dict[str, Any]:
    """process_image over the images in ``workers`` processes, no HTTP (see workloads.bound)."""
    figure = workloads.bound(paths, workers)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in figure["stage_ms"].items())
    say(
        f"  bound {when:6} {kind:5} x{len(paths):<3}: {figure['images_per_s']:7.1f} images/s"
        f" in {workers} process(es) (ms per image: {stages})"
    )
    return figure


def measure_memory(system: DarkroomUp, args: argparse.Namespace) -> dict[str, Any]:
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


def measure_idle(system: DarkroomUp, args: argparse.Namespace, first: Path) -> dict[str, Any]:
    figure = workloads.idle_latency(system, first.read_bytes(), args.idle_repeats)
    say(
        f"  idle latency (upload to ready, x{figure['repeats']}): p50 {figure['p50_ms']:.0f} ms,"
        f" p95 {figure['p95_ms']:.0f} ms, min {figure['min_ms']:.0f} ms"
    )
    return figure


def summary(args: argparse.Namespace, results: dict[str, Any]) -> None:
    say("\nsummary                         " + "".join(f"{n:>4} worker(s)" for n in args.workers))
    for kind in results["e2e"]:
        rows = {
            f"{kind} bound (images/s)": [
                results["bound"][kind][n]["images_per_s"] for n in args.workers
            ],
            f"{kind} end to end (jobs/s)": [
                results["e2e"][kind][n]["jobs_per_s"] for n in args.workers
            ],
            f"{kind} end to end / bound": [
                results["e2e"][kind][n]["vs_bound"] for n in args.workers
            ],
            f"{kind} vs Go ({GO[kind]:g} jobs/s)": [
                results["e2e"][kind][n]["jobs_per_s"] / GO[kind] for n in args.workers
            ],
        }
        for label, values in rows.items():
            say(f"  {label:30}" + "".join(f"{v:15.2f}" for v in values))
    photo = results["e2e"].get("photo")
    small = results["e2e"].get("small")
    checks = []
    if photo:
        checks += [
            (
                "photo end to end >= 0.85 x bound (every worker count)",
                min(f["vs_bound"] for f in photo.values()) >= TARGETS["photo_vs_bound"],
                ", ".join(f"{n}: {f['vs_bound']:.2f}" for n, f in photo.items()),
            ),
            (
                f"photo end to end >= {TARGETS['photo_jobs_per_s']:.2f} jobs/s (2.5 x Go)",
                max(f["jobs_per_s"] for f in photo.values()) >= TARGETS["photo_jobs_per_s"],
                f"best {max(f['jobs_per_s'] for f in photo.values()):.2f}",
            ),
        ]
    if small:
        checks.append(
            (
                "small end to end >= 150 jobs/s overall",
                max(f["jobs_per_s"] for f in small.values()) >= TARGETS["small_jobs_per_s"],
                f"best {max(f['jobs_per_s'] for f in small.values()):.1f}",
            )
        )
    if idle := results.get("idle"):
        checks.append(
            (
                "idle latency p50 <= 100 ms",
                idle["p50_ms"] <= TARGETS["idle_p50_ms"],
                f"{idle['p50_ms']:.0f} ms",
            )
        )
    if memory := results.get("memory"):
        growth = {role: memory[role]["rss_growth_mb"] for role in ("master", "storage")}
        checks.append(
            (
                f"RSS growth <= 30 MB during a {memory['upload_mb']:.0f} MB upload",
                max(growth.values()) <= TARGETS["rss_growth_mb"],
                ", ".join(f"{role} {mb:.1f} MB" for role, mb in growth.items()),
            )
        )
    say("\ntargets" + (" (quick run: counts too small to mean anything)" if args.quick else ""))
    results["targets"] = []
    for text, met, detail in checks:
        results["targets"].append({"target": text, "met": met, "figure": detail})
        say(f"  [{'met' if met else 'MISSED'}] {text}: {detail}")
    say(f"\nbenchmark took {results['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
