"""The benchmark runs end to end with tiny counts and prints every figure (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


@pytest.mark.timeout(600)
def test_quick_benchmark_completes_and_prints_the_figures(tmp_path):
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for text in (
        "bound before small",
        "bound after",
        "end to end small",
        "end to end photo",
        "idle latency",
        "memory master",
        "memory storage",
        "claims/s",
        "finishes/s",
        "end to end / bound",
        "targets",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    results = json.loads(figures.read_text())
    assert results["e2e"]["photo"]["2"]["verified"] == 2
    assert results["e2e"]["small"]["2"]["verified"] == 20
    assert len(results["targets"]) == 5
    bound = results["bound"]["photo"]["2"]
    assert bound["images_per_s"] > 0 and {"before", "after"} <= bound.keys()
