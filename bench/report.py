"""What the benchmark prints: each run's figures, the summary tables and the targets, with
"met" or "MISSED" from this run's figures.
"""

from __future__ import annotations

import argparse
from typing import Any

# The original Go system on a 2-core machine (see docs/benchmarks.md); with the seed's polling
# clients (issue 12) it did 90 small and 2.09 photo jobs/s.
GO = {"photo": 1.9, "small": 70.0, "small_awake": 165.0, "idle_ms": 500.0}
GO_POLLING = {"small": 90.0, "photo": 2.09}
CPU_ROLES = ("master", "database", "storage", "registry", "worker", "frontend", "client")
ISSUE_WORKERS = 2  # issue 12's workloads: 2 worker loops against 2 thumbor processes
TARGETS = {
    "thumbnails_vs_thumbor": 1.0,
    "small_polling_jobs_per_s": 150.0,
    "photo_polling_vs_bound": 0.9,
    "photo_long_poll_vs_bound_today": 0.79,  # 2 workers, docs/benchmarks.md (2026-11-29)
    "overhead_cpu_ms": 8.0,
    "large_peak_rss_mb": 200.0,
    "photo_jobs_per_s": 2.5 * GO["photo"],
    "idle_p50_ms": 100.0,
    "rss_growth_mb": 30.0,
}


def say(text: str = "") -> None:
    print(text, flush=True)


def report_jobs(label: str, figure: dict[str, Any]) -> None:
    steady = figure.get("steady_jobs_per_s")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in figure["worker_stage_ms"].items())
    say(
        f"  end to end {label}: {figure['jobs_per_s']:7.1f} jobs/s"
        + (f" (steady {steady:.1f})" if steady else "")
        + f", latency p50 {figure['latency_p50_s'] * 1000:.0f} ms"
        f" p95 {figure['latency_p95_s'] * 1000:.0f} ms, all {figure['verified']} verified"
    )
    say(f"      worker busy {figure['worker_busy_fraction']:.0%}; ms per job: {stages}")
    cpu = figure["cpu_ms_per_job"]
    say(
        "      CPU ms per job: "
        + ", ".join(f"{role} {cpu[role]:.1f}" for role in CPU_ROLES if role in cpu)
        + f"; total {sum(cpu.values()):.1f} ({figure['cpu_share']:.2f} cores busy)"
    )
    if kernel := figure.get("kernel_ms_per_job"):
        say(
            "      of which in the kernel (system time): "
            + ", ".join(f"{role} {kernel[role]:.1f}" for role in CPU_ROLES if role in kernel)
        )
    if answered := figure.get("requests_per_job"):
        say(
            "      requests answered per job: "
            + ", ".join(f"{role} {count:.1f}" for role, count in answered.items())
            + f"; total {sum(answered.values()):.1f}"
        )


def report_overhead(overhead: dict[str, float], processing_ms: float, figure: dict) -> None:
    stages = sum(figure["worker_stage_ms"][s] for s in ("decode", "operation", "encode"))
    say(
        "      job overhead, CPU ms per job: "
        + ", ".join(f"{role} {overhead[role]:.1f}" for role in CPU_ROLES if role in overhead)
        + f"; total {overhead['total']:.1f} (all roles but the client, minus the processing:"
        f" {processing_ms:.1f} ms CPU in the bound; the worker's stage times say {stages:.1f})"
    )


def summary(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if e2e := results.get("e2e"):
        long_poll_table(args, results, e2e)
    issue_table(results)
    checks = targets(results)
    say("\ntargets" + (" (quick run: counts too small to mean anything)" if args.quick else ""))
    results["targets"] = []
    for text, met, detail in checks:
        results["targets"].append({"target": text, "met": met, "figure": detail})
        verdict = "skipped" if met is None else "met" if met else "MISSED"
        say(f"  [{verdict}] {text}: {detail}")
    say(f"\nbenchmark took {results['seconds']:.0f} s")


def long_poll_table(args: argparse.Namespace, results: dict[str, Any], e2e: dict[str, Any]) -> None:
    counts = [n for n in args.workers if any(n in figures for figures in e2e.values())]
    say("\nlong polls, summary              " + "".join(f"{n:>4} worker(s)" for n in counts))
    for kind, figures in e2e.items():
        rows = {
            f"{kind} bound (images/s)": [results["bound"][kind][n]["images_per_s"] for n in counts],
            f"{kind} end to end (jobs/s)": [figures[n]["jobs_per_s"] for n in counts],
            f"{kind} end to end / bound": [figures[n]["vs_bound"] for n in counts],
            f"{kind} vs Go ({GO[kind]:g} jobs/s)": [
                figures[n]["jobs_per_s"] / GO[kind] for n in counts
            ],
        }
        for label, values in rows.items():
            say(f"  {label:30}" + "".join(f"{v:15.2f}" for v in values))


def issue_table(results: dict[str, Any]) -> None:
    """Issue 12's workloads at 2 worker loops, one figure a line."""
    rows: dict[str, float] = {}
    thumbor = results.get("peer", {}).get("requests_per_s")
    if thumbnails := results.get("thumbnails"):
        rows["thumbnails: Darkroom jobs/s"] = thumbnails["jobs_per_s"]
        rows["thumbnails: Darkroom's own processing, images/s"] = thumbnails["bound"][
            "images_per_s"
        ]
    if thumbor:
        rows["thumbnails: thumbor requests/s"] = thumbor
    if thumbnails and thumbor:
        rows["thumbnails: Darkroom / thumbor"] = thumbnails["jobs_per_s"] / thumbor
    for kind, figure in results.get("polling", {}).items():
        rows[f"{kind}, polling client: jobs/s (Go {GO_POLLING[kind]:g})"] = figure["jobs_per_s"]
        rows[f"{kind}, polling client: bound, images/s"] = figure["bound"]["images_per_s"]
        rows[f"{kind}, polling client: x bound"] = figure["vs_bound"]
    for name, figure in overheads(results).items():
        rows[f"job overhead, {name}: CPU ms per job"] = figure["total"]
    if large := results.get("large"):
        rows[f"{large['megapixels']:.0f} MP JPEG: worker peak RSS, MB"] = large["peak_rss_mb"]
    if rows:
        say(f"\nissue 12 workloads, {ISSUE_WORKERS} worker loops")
        for label, value in rows.items():
            say(f"  {label:55} {value:8.2f}")


def overheads(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The job overhead of the workloads the target is about: thumbnails and small images
    (a photo's overhead is mostly moving 7 MB of bytes; its target is the ratio to the bound)."""
    found = {}
    if thumbnails := results.get("thumbnails"):
        found["thumbnails"] = thumbnails["overhead_ms"]
    if small := results.get("polling", {}).get("small"):
        found["small, polling"] = small["overhead_ms"]
    return found


Target = tuple[str, bool | None, str]  # the target, met (None: not measured), the figures


def targets(results: dict[str, Any]) -> list[Target]:
    found = issue_targets(results)
    photo = results.get("e2e", {}).get("photo", {})
    if ratio := photo.get(ISSUE_WORKERS, {}).get("vs_bound"):
        today = TARGETS["photo_long_poll_vs_bound_today"]
        text = f"photos with long polls no worse than today ({today} x bound, 2 workers)"
        found.append((text, ratio >= today, f"{ratio:.2f}"))
    if photo:
        best, bar = max(f["jobs_per_s"] for f in photo.values()), TARGETS["photo_jobs_per_s"]
        text = f"photos with long polls >= {bar:.2f} jobs/s (2.5 x Go)"
        found.append((text, best >= bar, f"best {best:.2f}"))
    if idle := results.get("idle"):
        p50 = idle["p50_ms"]
        found.append(("idle latency p50 <= 100 ms", p50 <= TARGETS["idle_p50_ms"], f"{p50:.0f} ms"))
    if memory := results.get("memory"):
        growth = {role: memory[role]["rss_growth_mb"] for role in ("master", "storage")}
        text = f"RSS growth <= 30 MB during a {memory['upload_mb']:.0f} MB upload"
        detail = ", ".join(f"{role} {mb:.1f} MB" for role, mb in growth.items())
        found.append((text, max(growth.values()) <= TARGETS["rss_growth_mb"], detail))
    return found


def issue_targets(results: dict[str, Any]) -> list[Target]:
    """Issue 12's targets, from this run's figures."""
    found: list[Target] = []
    if thumbnails := results.get("thumbnails"):
        found.append(thumbnail_target(thumbnails, results.get("peer", {"skipped": "not run"})))
    polling = results.get("polling", {})
    if small := polling.get("small"):
        rate = small["jobs_per_s"]
        text = "small images >= 150 jobs/s overall, polling client"
        found.append((text, rate >= TARGETS["small_polling_jobs_per_s"], f"{rate:.1f}"))
    if photo := polling.get("photo"):
        ratio, bound = photo["vs_bound"], photo["bound"]["images_per_s"]
        detail = f"{ratio:.2f} ({photo['jobs_per_s']:.2f} jobs/s, bound {bound:.2f} images/s)"
        text = "photos >= 0.9 x bound, polling client"
        found.append((text, ratio >= TARGETS["photo_polling_vs_bound"], detail))
    if measured := overheads(results):
        worst = max(figure["total"] for figure in measured.values())
        detail = "; ".join(f"{name} {per_role(figure)}" for name, figure in measured.items())
        text = "job overhead <= 8 ms CPU per job"
        found.append((text, worst <= TARGETS["overhead_cpu_ms"], detail))
    if large := results.get("large"):
        peak = large["peak_rss_mb"]
        text = f"{large['megapixels']:.0f} MP JPEG thumbnail: worker peak RSS <= 200 MB"
        found.append((text, peak <= TARGETS["large_peak_rss_mb"], f"{peak:.0f} MB"))
    return found


def thumbnail_target(darkroom: dict[str, Any], thumbor: dict[str, Any]) -> Target:
    text = "thumbnails: Darkroom jobs/s >= 1.0 x thumbor's requests/s"
    if "skipped" in thumbor:
        why = thumbor["skipped"]
        return text, None, f"{darkroom['jobs_per_s']:.1f} jobs/s; thumbor skipped ({why})"
    ours, theirs = darkroom["jobs_per_s"], thumbor["requests_per_s"]
    ratio = ours / theirs
    return (
        text,
        ratio >= TARGETS["thumbnails_vs_thumbor"],
        f"{ours:.1f} vs {theirs:.1f}: {ratio:.2f}",
    )


def per_role(figure: dict[str, float]) -> str:
    roles = ", ".join(f"{role} {figure[role]:.1f}" for role in CPU_ROLES if role in figure)
    return f"{figure['total']:.1f} ({roles})"
