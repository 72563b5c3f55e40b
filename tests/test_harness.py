"""The harness tests and benchmarks share: its seams, and the parts a wrong answer would hide in."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

from darkroom.contract.roles import ROLES
from harness import launch
from harness.environment import ROLES as HARNESS_ROLES
from harness.environment import service_env
from harness.launch import HOST
from harness.metrics import CounterTotal, labels, samples, total, value
from harness.proc import children, command_line, cpu_seconds, memory_kib, running

ROOT = Path(__file__).resolve().parents[1]


def imported_top_names(folder: Path) -> dict[str, set[str]]:
    """Each module's imported top-level names, by file."""
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_tests_and_bench_meet_only_in_the_harness():
    bench_modules = {path.stem for path in (ROOT / "bench").glob("*.py")}
    test_support = {"support", "tests", "conftest"}
    for path, names in imported_top_names(ROOT / "tests").items():
        assert not names & (bench_modules | {"bench", "launch"}), f"{path} imports bench"
    for path, names in imported_top_names(ROOT / "bench").items():
        assert not names & test_support, f"{path} imports tests"
    for path, names in imported_top_names(ROOT / "harness").items():
        assert not names & (test_support | bench_modules | {"bench"}), path


def test_harness_imports_no_darkroom_code():
    """bench/run.py --services measures another copy of darkroom: the harness must not pin one."""
    modules = [f"harness.{path.stem}" for path in (ROOT / "harness").glob("[!_]*.py")]
    script = (
        f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'darkroom'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_harness_roles_are_the_contracts():
    assert tuple(ROLES) == HARNESS_ROLES


def test_service_env_puts_the_code_first_and_names_settings_as_config_reads_them(tmp_path):
    env = service_env(tmp_path, "secret", lease_seconds="3", host=HOST)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert env["DARKROOM_INTERNAL_TOKEN"] == "secret"
    assert env["DARKROOM_LEASE_SECONDS"] == "3" and env["DARKROOM_HOST"] == HOST


SCRAPE = """\
# TYPE darkroom_worker_loops gauge
darkroom_worker_loops{pid="1"} 1.0
darkroom_worker_loops{pid="2"} 1.0
# TYPE darkroom_worker_stage_seconds histogram
darkroom_worker_stage_seconds_sum{stage="decode"} 0.25
darkroom_worker_stage_seconds_count{stage="decode"} 2.0
"""


def test_metrics_parse_prometheus_text_by_name_and_labels():
    found = samples(SCRAPE)
    assert total(found, "darkroom_worker_loops") == 2
    assert value(found, "darkroom_worker_stage_seconds_sum", stage="decode") == 0.25
    assert found[("darkroom_worker_loops", labels(pid="2"))] == 1
    assert value(found, "darkroom_worker_stage_seconds_sum", stage="encode") == 0


def test_counter_total_survives_restarts_seen_by_value_or_by_source():
    counted = CounterTotal()
    assert not counted.read
    counted.add(2, source=10)
    counted.add(5, source=10)  # +3
    counted.add(1, source=10)  # lower: restarted, +1
    counted.add(4, source=11)  # another process, though higher: +4
    assert counted.increase == 10 and counted.read


def test_proc_reads_this_process_and_answers_for_a_gone_one():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in children(os.getpid())
        assert running(child.pid) and command_line(child.pid)[0] == sys.executable
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds(os.getpid()) > 0
    memory = memory_kib(os.getpid())
    assert memory["VmHWM"] >= memory["VmRSS"] > 0
    assert not running(child.pid) and cpu_seconds(child.pid) == 0 and children(child.pid) == []


def test_free_ports_are_below_the_range_outgoing_connections_take_theirs_from():
    low, _ = launch.ephemeral_ports()
    ports = {launch.free_port() for _ in range(20)}
    assert len(ports) == 20, "two asked for in a row differ"
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((launch.HOST, port))  # free, as promised
