"""The benchmark runs end to end with tiny counts and prints every figure (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def run_quick(tmp_path: Path, *args: str) -> tuple[str, dict]:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(figures), *args],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(figures.read_text())


@pytest.mark.timeout(600)
def test_quick_benchmark_completes_and_prints_the_figures(tmp_path):
    out, results = run_quick(tmp_path)
    for text in (
        "bound before small",
        "bound after",
        "end to end small x20, 8 threads polling every 20 ms",
        "end to end photo x2, 4 threads polling every 50 ms",
        "end to end small x20, long polls",
        "end to end photo x2, long polls",
        "end to end thumbnails x8, 4 threads, op=resize:512x512,jpeg:80",
        "bound thumbnails x4",
        "job overhead, CPU ms per job",
        "worker loops' peak RSS (VmHWM)",
        "idle latency",
        "memory master",
        "memory storage",
        "claims/s",
        "finishes/s",
        "end to end / bound",
        "issue 12 workloads",
        "targets",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    # thumbor runs in --quick only when its virtual environment is cached; either way it says so.
    assert "thumbor thumbnails x8" in out or "thumbor: skipped (--quick" in out, out
    assert results["e2e"]["photo"]["2"]["verified"] == 2
    assert results["e2e"]["small"]["2"]["verified"] == 20
    assert results["polling"]["small"]["verified"] == 20
    assert results["polling"]["photo"]["verified"] == 2
    assert results["thumbnails"]["verified"] == 8
    assert results["large"]["peak_rss_mb"] > results["large"]["peak_rss_before_mb"] > 0
    overhead = results["polling"]["small"]["overhead_ms"]
    assert {"master", "database", "storage", "worker", "total"} <= overhead.keys()
    assert "client" not in overhead
    targets = [t["target"] for t in results["targets"]]
    assert len(targets) == 9, targets
    assert sum("thumbor" in t or "overhead" in t or "peak RSS" in t for t in targets) == 3
    bound = results["bound"]["photo"]["2"]
    assert bound["images_per_s"] > 0 and {"before", "after"} <= bound.keys()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "through_apis", [False, True], ids=["on-the-volume-and-file", "storage-and-database-apis"]
)
def test_only_runs_the_chosen_workload_and_can_leave_thumbor_out(tmp_path, through_apis):
    more = ["--storage-api", "--database-api"] if through_apis else []
    out, results = run_quick(tmp_path, "--only", "thumbnails", "--no-peer", *more)
    assert "thumbor: skipped (--no-peer)" in out
    assert "[skipped] thumbnails: Darkroom jobs/s >= 1.0 x thumbor's requests/s" in out
    assert results["thumbnails"]["verified"] == 8
    assert not {"e2e", "polling", "large", "idle", "memory", "database"} & results.keys()
    # darkroom up's master and worker reach the images on the volume and the tasks in their
    # file; --storage-api and --database-api, by HTTP
    if through_apis:
        assert (
            "(the storage's images reached through its API, the database's tasks through its API)"
            in out
        )
    else:
        assert (
            "(the storage's images reached on its volume, the database's tasks on its file)" in out
        )
    requests = results["thumbnails"]["requests_per_job"]
    assert requests["storage"] == (4.0 if through_apis else 0.0)
    assert (requests["database"] >= 4.0) if through_apis else (requests["database"] == 0.0)


def test_the_database_part_measures_postgresql_with_one_and_two_processes(
    tmp_path, postgres_server
):
    """``postgres_server`` only for its skip (or CI failure) where PostgreSQL is missing."""
    out, results = run_quick(tmp_path, "--only", "database")
    runs = {(figure["store"], figure["processes"]) for figure in results["database"]}
    assert runs == {("sqlite", 1), ("postgresql", 1), ("postgresql", 2)}, out
    assert all(figure["jobs_per_s"] > 0 for figure in results["database"])
    assert "postgresql x2" in out


def test_the_transport_comparison_runs_both_copies(tmp_path):
    services = str(RUN.parents[1] / "services")
    copies = ["--services", services, "--services", services]
    result = subprocess.run(
        [sys.executable, str(RUN.with_name("transport_calls.py")), *copies, "--calls", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for kind in ("get_json", "post_params", "stream_image"):
        assert result.stdout.count(f"{kind} ") == 2, result.stdout
