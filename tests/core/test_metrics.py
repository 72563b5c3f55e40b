from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import sys
import threading

import falcon
import pytest
from falcon import testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.imagefiles import Folder
from darkroom.core.metrics import RequestMetrics
from darkroom.database.app import create_app as create_database_app
from darkroom.database.store import LeasePolicy, SqliteTaskStore, State, TaskConflict
from darkroom.worker.loop import TaskLoop
from darkroom.worker.metrics import (
    MULTIPROC_ENV,
    BusyFraction,
    TaskMetrics,
    multiprocess_dir,
    remove_multiprocess_dir,
    remove_stale_multiprocess_dirs,
)
from darkroom.worker.operations import ImageRejected, ProcessingSettings, process_image
from darkroom.worker.service import timed_processor
from harness.metrics import labels, samples
from support.images import png_bytes
from support.inprocess import master_side

TOKEN = "metrics-test-token"


def scrape(client: testing.TestClient) -> dict[tuple[str, frozenset], float]:
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    return samples(result.text)


class Item:
    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: int) -> None:
        resp.media = {"id": item_id}


def test_requests_are_counted_by_route_template_and_status(tmp_path):
    app = create_base_app(Config(data_dir=tmp_path, internal_token=TOKEN))
    app.add_route("/items/{item_id:int}", Item())
    client = testing.TestClient(app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.simulate_get("/items/7", headers=bearer).status_code == 200
    assert client.simulate_get("/items/8", headers=bearer).status_code == 200
    assert client.simulate_get("/items/9").status_code == 401
    assert client.simulate_get("/nowhere").status_code == 404

    found = scrape(client)  # /metrics is public: no token needed

    route = "/items/{item_id:int}"
    counter = "darkroom_http_requests_total"
    assert found[(counter, labels(method="GET", route=route, status="200"))] == 2
    assert found[(counter, labels(method="GET", route=route, status="401"))] == 1
    assert found[(counter, labels(method="GET", route="(unrouted)", status="404"))] == 1
    assert not any("/items/7" in str(key) for key in found)  # never the raw path
    histogram = "darkroom_http_request_duration_seconds_count"
    assert found[(histogram, labels(method="GET", route=route))] == 3


@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")  # the made-up methods
def test_label_values_come_from_a_fixed_set_whatever_the_client_sends(tmp_path):
    # Made-up methods (and paths) once each became a label value: 6,000 of them grew a master
    # to 239 MB and its /metrics to 130 MB.
    app = create_base_app(Config(data_dir=tmp_path, internal_token=TOKEN))
    app.add_route("/items/{item_id:int}", Item())
    client = testing.TestClient(app)
    for n in range(50):
        client.simulate_request(f"FROB{n}", f"/items/{n}")
        client.simulate_request(f"X{n}", f"/made-up/{n}")
    client.simulate_request("DELETE", "/items/1")

    found = scrape(client)

    methods = {dict(key)["method"] for name, key in found if name.startswith("darkroom_http")}
    assert methods <= {"GET", "DELETE", "other"}
    routes = {dict(key).get("route") for name, key in found if "darkroom_http" in name}
    assert routes <= {"/items/{item_id:int}", "(unrouted)", "/metrics", None}
    other = [
        value
        for (name, key), value in found.items()
        if name == "darkroom_http_requests_total" and dict(key)["method"] == "other"
    ]
    assert sum(other) == 100
    assert len(other) <= 4  # by route and status only: a few series, not one per request


@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")  # the made-up methods
def test_the_series_kept_for_quick_look_ups_are_one_per_label_set():
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    app = falcon.App(middleware=[metrics])
    app.add_route("/items/{item_id:int}", Item())
    client = testing.TestClient(app)
    for n in range(50):
        assert client.simulate_request(f"FROB{n}", f"/items/{n}").status_code == 400
        assert client.simulate_get(f"/items/{n}").status_code == 200
    # keyed by the label values, not by what the client sent
    assert sorted(metrics._children) == [
        ("GET", "/items/{item_id:int}", 200),
        ("other", "/items/{item_id:int}", 400),
    ]
    found = samples(generate_latest(registry).decode())
    ok = labels(method="GET", route="/items/{item_id:int}", status="200")
    assert found[("darkroom_http_requests_total", ok)] == 50


def test_every_role_serves_metrics_without_credentials(config):
    secured = config.replace(internal_token=TOKEN)
    store = SqliteTaskStore(secured.data_dir / "tasks.sqlite3", LeasePolicy())
    client = testing.TestClient(create_database_app(secured, store))
    assert client.simulate_get("/metrics").status_code == 200
    assert client.simulate_post("/newTask").status_code == 401


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_database_exports_queue_depth_and_lease_expiries(config):
    clock = Clock()
    store = SqliteTaskStore(
        config.data_dir / "tasks.sqlite3", LeasePolicy(lease_seconds=10), clock=clock
    )
    client = testing.TestClient(create_database_app(config, store))
    uploading = store.create("swap")
    for _ in range(3):
        store.enqueue(store.create("swap").id)
    claimed = store.claim()
    assert claimed is not None and uploading.id != claimed.id

    found = scrape(client)
    counts = store.counts()
    for state in State:
        assert found[("darkroom_tasks", labels(state=state.value))] == counts[state]
    assert found[("darkroom_tasks", labels(state="queued"))] == 2
    assert found[("darkroom_tasks", labels(state="in progress"))] == 1
    assert found[("darkroom_lease_expiries_total", frozenset())] == 0

    clock.now += 11  # the lease runs out; the scrape's sweep puts the task back
    store.get(claimed.id)
    found = scrape(client)
    assert found[("darkroom_lease_expiries_total", frozenset())] == 1
    assert found[("darkroom_tasks", labels(state="queued"))] == 3


def test_database_counts_the_finishes_it_refuses(config):
    """What chaos counts as work done twice: a lost lease finishing, a finished task again."""
    clock = Clock()
    store = SqliteTaskStore(
        config.data_dir / "tasks.sqlite3", LeasePolicy(lease_seconds=10), clock=clock
    )
    client = testing.TestClient(create_database_app(config, store))
    store.enqueue(store.create("swap").id)
    lost = store.claim()
    clock.now += 11  # the lease runs out and another worker claims the task
    held = store.claim()
    assert lost is not None and held is not None and held.id == lost.id
    with pytest.raises(TaskConflict):
        store.finish(lost.id, lost.lease_token)
    store.finish(held.id, held.lease_token)
    store.finish(held.id, held.lease_token)  # the holder repeating itself is no refusal
    with pytest.raises(TaskConflict):
        store.finish(lost.id, lost.lease_token)
    assert scrape(client)[("darkroom_finishes_refused_total", frozenset())] == 2


@pytest.fixture
def wired(config):
    """The worker's task loop against real database, storage and master apps, in-process."""
    system = master_side(config)
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    loop = TaskLoop(
        system.master,
        system.storage,
        timed_processor(ProcessingSettings(), metrics),
        ImageRejected,
        claim_wait_seconds=0,
        lease_seconds=5,
        http_timeout=5,
        stop=threading.Event(),
        metrics=metrics,
    )
    return system.tasks, system.storage, system.master, loop, registry


def submit(tasks, storage, body: bytes) -> str:
    task = tasks.create("swap")
    storage.send(Folder.WORKING, task.id, body)
    tasks.enqueue(task.id)
    return task.id


def test_worker_metrics_after_processed_tasks(wired):
    tasks, storage, master, loop, registry = wired
    done = submit(tasks, storage, png_bytes((16, 12)))
    failed = submit(tasks, storage, b"\x89PNG\r\n\x1a\n not really")
    for _ in range(2):
        claim = master.claim(0, 5)
        assert claim is not None
        loop.handle(claim)
    assert tasks.get(done).state == State.FINISHED
    assert tasks.get(failed).state == State.FAILED

    found = samples(generate(registry))
    outcome = "darkroom_worker_tasks_total"
    assert found[(outcome, labels(outcome="done"))] == 1
    assert found[(outcome, labels(outcome="failed"))] == 1
    assert found[(outcome, labels(outcome="error"))] == 0
    stage = "darkroom_worker_stage_seconds_count"
    assert found[(stage, labels(stage="download"))] == 2
    assert found[(stage, labels(stage="decode"))] == 1  # the bad image never decoded
    for name in ("operation", "encode", "upload"):
        assert found[(stage, labels(stage=name))] == 1
    assert found[("darkroom_worker_busy_seconds_total", frozenset())] > 0
    assert found[("darkroom_worker_busy_loops", frozenset())] == 0


def generate(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_busy_fraction_is_busy_time_over_loop_time_since_last_scrape():
    clock = Clock()
    metrics = TaskMetrics(CollectorRegistry())
    busy = BusyFraction([metrics.busy_seconds, metrics.loops], clock=clock)
    metrics.loops.set(2)
    metrics.busy_seconds.inc(5)
    clock.now += 10
    assert next(iter(busy.collect())).samples[0].value == pytest.approx(0.25)
    clock.now += 10  # idle since
    assert next(iter(busy.collect())).samples[0].value == 0


def _count_in_loop_process(outcome: str) -> None:
    # A fresh interpreter (spawn): prometheus_client reads PROMETHEUS_MULTIPROC_DIR on import.
    metrics = TaskMetrics()
    metrics.outcome(outcome)
    metrics.observe("encode", 0.5)
    with metrics.running():
        pass


def test_loop_processes_report_through_the_multiprocess_folder():
    path = multiprocess_dir()
    try:
        context = multiprocessing.get_context("spawn")
        for outcome in ("done", "done", "failed"):
            process = context.Process(target=_count_in_loop_process, args=(outcome,))
            process.start()
            process.join(60)
            assert process.exitcode == 0
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
        found = samples(generate(registry))
    finally:
        remove_multiprocess_dir(path)
    assert MULTIPROC_ENV not in os.environ
    assert found[("darkroom_worker_tasks_total", labels(outcome="done"))] == 2
    assert found[("darkroom_worker_tasks_total", labels(outcome="failed"))] == 1
    assert found[("darkroom_worker_stage_seconds_count", labels(stage="encode"))] == 3


def test_stage_timings_from_process_image():
    timings: dict[str, float] = {}
    output = io.BytesIO()
    process_image(io.BytesIO(png_bytes()), output, "swap", ProcessingSettings(), timings)
    assert set(timings) == {"decode", "operation", "encode"}
    assert all(seconds >= 0 for seconds in timings.values())
    assert output.getvalue().startswith(b"\x89PNG")


def test_folders_of_killed_workers_are_removed(tmp_path):
    # Workers making their folders in tmp_path: one that stays alive until its stdin closes, then
    # one SIGKILLed, whose folder is left behind. The lock on a folder tells, not the pid in its
    # name: in a container every worker is PID 1, the killed one and its successor alike.
    code = (
        "import os, sys; from darkroom.worker.metrics import multiprocess_dir\n"
        "print(multiprocess_dir(), flush=True)\n"
        "sys.stdin.read() if sys.argv[1] == 'live' else os.kill(os.getpid(), 9)"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    live = subprocess.Popen(
        [sys.executable, "-c", code, "live"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        live_folder = live.stdout.readline().strip()
        killed = subprocess.run(
            [sys.executable, "-c", code, "killed"], env=env, capture_output=True, text=True
        )
        killed_folder = killed.stdout.strip()
        assert killed.returncode == -9 and os.path.isdir(killed_folder), killed.stderr
        assert os.path.isdir(live_folder)  # the killed worker's own cleanup left it alone
        same_pid = tmp_path / f"darkroom-metrics-{os.getpid()}-abc"  # a live pid, no lock
        other = tmp_path / "unrelated"
        for folder in (same_pid, other):
            folder.mkdir()
        assert remove_stale_multiprocess_dirs(str(tmp_path)) == 2
        assert not os.path.exists(killed_folder) and not same_pid.exists()
        assert os.path.isdir(live_folder) and other.exists()
    finally:
        live.stdin.close()
        live.wait(30)
