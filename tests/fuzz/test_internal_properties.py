"""Property-based tests of the internal APIs (database, storage, registry) through falcon.testing.

Random ids, leases, states, numbers, query strings, headers and bodies, in random orders. For
every request: no 5xx, and the status is one the route documents. Across requests: the
services keep their promises (a finished task never changes; only the latest lease holder
acts; a stored image reads back byte for byte; no temporary file or path outside the data
directory; the registry holds exactly what was set).
"""

from __future__ import annotations

import base64
import json
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, quote_from_bytes

import falcon
import psycopg
import pytest
from falcon import testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from darkroom.contract.limits import IDEMPOTENCY_KEY_PATTERN
from darkroom.contract.pipeline import MAX_PIPELINE_CHARS
from darkroom.contract.webhooks import MAX_WEBHOOK_URL_CHARS
from darkroom.core.config import Config
from darkroom.core.ids import TASK_ID_PATTERN
from darkroom.core.imagefiles import TEMP_PREFIX, FileImageStore
from darkroom.database import app as database_app
from darkroom.database.pgstore import PostgresTaskStore
from darkroom.database.store import LeasePolicy, SqliteTaskStore, State, TaskStore
from darkroom.registry.app import create_app as create_registry_app
from darkroom.registry.store import FileKeyValueStore
from darkroom.storage.app import create_app as create_storage_app
from support.images import png_bytes

MAX_ATTEMPTS = 3
LEASE_SECONDS = 5.0
STATE_MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
EXAMPLE_SETTINGS = settings(max_examples=150, deadline=None)

# -- strategies ---------------------------------------------------------------------------

# Text a query string or JSON can carry (no lone surrogates: they cannot be URL-encoded).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
valid_ids = st.from_regex(TASK_ID_PATTERN, fullmatch=True)
nasty = st.sampled_from(
    [
        "",
        " ",
        "nan",
        "NaN",
        "-nan",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "-1",
        "0",
        "-0",
        "0.01",
        "1",
        "99999999999999999999",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        "../../etc/passwd",
        "..",
        ".",
        "A" * 21,
        "A" * 23,
        "A" * 21 + "/",
        "A" * 21 + "\x00",
        "\x00",
        "\u2603" * 22,
        "a" * 5000,
        "working",
        "finished",
        "WORKING",
        "swap",
    ]
)
values = st.one_of(nasty, text, valid_ids)
numbers = st.one_of(
    nasty,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(0, 0.02).map(str),
)
param_names = st.sampled_from(
    [
        "id",
        "lease",
        "pipeline",
        "wait",
        "error",
        "retry",
        "state",
        "key",
        "value",
        "limit",
        "idempotencyKey",
        "bodySha256",
        "after",
        "stages",
    ]
)
params = st.dictionaries(st.one_of(param_names, text), values, max_size=5)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
bodies = st.one_of(st.none(), st.binary(max_size=300), text.map(str.encode))


@st.composite
def raw_query_strings(draw) -> str:
    """Query strings as on the wire: repeated names, blank values, bad UTF-8, stray ``%``."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(param_names, text.map(quote)))
        raw = draw(st.one_of(values.map(quote), st.binary(max_size=12).map(quote_from_bytes)))
        junk = draw(st.sampled_from(["", "%", "%g", "%ff", "+", "&", "=", ";"]))
        parts.append(f"{name}={raw}{junk}")
    return "&".join(parts)


header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
# waitress answers 400 itself for a Content-Length that is not digits: only digits reach an app
content_lengths = st.integers(0, 10**12).map(str)
_headers = st.dictionaries(
    st.sampled_from(["Accept", "Content-Type", "Authorization", "X-API-Key", "X-Request-ID"]),
    st.one_of(
        header_values,
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "*/*",
                "application/json;q=0",
                "text/plain;q=abc, application/json",
                "image/png",
                "Bearer ",
                "Bearer x",
                "Basic !!!",
                "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
                "abc",
            ]
        ),
    ),
    max_size=3,
)
headers = st.builds(
    lambda given, length: given if length is None else {**given, "Content-Length": length},
    _headers,
    st.one_of(st.none(), content_lengths),
)


def call(client: testing.TestClient, expected: set[int], method: str, path: str, **kwargs):
    """One request; it must not fail on the server and must answer a documented status."""
    result = client.simulate_request(method, path, **kwargs)
    where = f"{method} {path} {kwargs}"
    assert result.status_code < 500, f"{where} -> {result.status}: {result.text[:500]}"
    assert result.status_code in expected, f"{where} -> {result.status}: {result.text[:500]}"
    if result.status_code >= 400 and method != "HEAD":
        assert result.headers["content-type"].startswith("application/json"), where
    return result


# Statuses any route may give for a malformed request, whatever its own ones are.
MALFORMED = {400, 405}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


# -- database -----------------------------------------------------------------------------

DATABASE_ROUTES = {
    ("POST", "/newTask"): {200, 201, 400},  # 200: the idempotency key's task
    ("POST", "/cancelTask"): {200, 400, 404, 409},
    ("POST", "/enqueueTask"): {200, 400, 404, 409},
    ("GET", "/getById"): {200, 400, 404},
    ("POST", "/getNewTask"): {200, 204, 400},
    ("POST", "/heartbeat"): {200, 400, 404, 409},
    ("POST", "/finishTask"): {200, 400, 404, 409},
    ("POST", "/failTask"): {200, 400, 404, 409},
    ("POST", "/releaseTask"): {200, 400, 404, 409},
    ("POST", "/setById"): {200, 400, 404, 409, 415},
    ("GET", "/list"): {200, 400},
    ("POST", "/claimDelivery"): {200, 204, 400},
    ("POST", "/reportDelivery"): {200, 400, 404, 409},
    ("GET", "/events"): {200, 400, 404, 503},
}
# A worker's stages as it sends them, and some it never would.
stage_lists = st.one_of(
    st.just('[{"stage":"download","startMs":0,"durationMs":1.5}]'),
    st.lists(
        st.fixed_dictionaries(
            {
                "stage": st.one_of(text, st.integers()),
                "startMs": st.one_of(st.floats(allow_nan=True), st.booleans(), st.none()),
                "durationMs": st.one_of(st.floats(-1, 1e6), st.integers(-5, 10**20)),
            }
        ),
        max_size=3,
    ).map(json.dumps),
    values,
)


def expected_for(routes: dict[tuple[str, str], set[int]], method: str, path: str) -> set[int]:
    known_paths = {route_path for _, route_path in routes}
    if path.rstrip("/") not in known_paths:
        return {404}
    if method == "OPTIONS":
        return {200}
    return routes.get((method, path.rstrip("/")), {405}) | MALFORMED | {404, 415, 200, 201, 204}


class AppMachine(RuleBasedStateMachine):
    """A state machine calling one app, ``client``, whose documented routes are ``routes``."""

    routes: dict[tuple[str, str], set[int]]
    client: testing.TestClient

    def _call(self, method: str, path: str, **kwargs):
        """A documented route: it must answer one of its own statuses."""
        return call(self.client, self.routes[(method, path)], method, path, **kwargs)

    def _call_anything(self, method: str, path: str, query: str, body, extra: dict):
        """Any method on any path, with a raw query: only a plausible status, never a 5xx."""
        expected = expected_for(self.routes, method, path)
        return call(
            self.client, expected, method, path, query_string=query, body=body, headers=extra
        )


def anything_rule(paths: list[str]):
    """The rule of every ``anything``: any method, raw query, body and headers on ``paths``."""
    return rule(
        method=methods,
        path=st.sampled_from(paths),
        query=raw_query_strings(),
        body=bodies,
        extra=headers,
    )


class DatabaseMachine(AppMachine):
    """Random calls to the database app; a model of what each answer may be."""

    routes = DATABASE_ROUTES
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        policy = LeasePolicy(
            lease_seconds=LEASE_SECONDS, max_attempts=MAX_ATTEMPTS, upload_timeout_seconds=60
        )
        self.store = self.open_store(policy)
        # A claim on an empty queue waits up to the cap: keep it short so "inf" costs little.
        config = Config(data_dir=Path(self._dir.name), max_wait_seconds=0.05)
        self.client = testing.TestClient(database_app.create_app(config, self.store))
        self.latest_lease: dict[str, str | None] = {}
        self.finished: dict[str, dict] = {}
        self.delivery_lease: dict[str, str | None] = {}
        self.settled: dict[str, dict] = {}  # delivered or failed webhooks: they never change
        self.cancelled: dict[str, dict] = {}
        self.keyed: dict[str, set[str]] = {}  # idempotency key -> the tasks created with it

    def open_store(self, policy: LeasePolicy) -> TaskStore:
        return SqliteTaskStore(Path(self._dir.name) / "tasks.sqlite3", policy, self.clock)

    def teardown(self) -> None:
        self.store.close()
        self._dir.cleanup()

    def _call(self, method: str, path: str, **kwargs):
        answer = super()._call(method, path, **kwargs)
        event(f"{path} -> {answer.status_code}")  # --hypothesis-show-statistics lists them
        return answer

    @rule(target=tasks, pipeline=st.one_of(st.just("swap"), values), enqueue=st.booleans())
    def create(self, pipeline, enqueue):
        created = self._call("POST", "/newTask", params={"pipeline": pipeline})
        if created.status_code != 201:
            assert not pipeline.strip() or len(pipeline) > MAX_PIPELINE_CHARS or "\x00" in pipeline
            return multiple()
        task_id = created.text
        assert TASK_ID_PATTERN.fullmatch(task_id)
        self.latest_lease[task_id] = None
        if enqueue:
            assert self._call("POST", "/enqueueTask", params={"id": task_id}).text == "success"
        return task_id

    @rule(target=tasks, webhook=st.one_of(st.just("https://hooks.example/in?t=1"), values))
    def create_with_webhook(self, webhook):
        created = self._call("POST", "/newTask", params={"pipeline": "swap", "webhook": webhook})
        if created.status_code != 201:
            assert not 0 < len(webhook) <= MAX_WEBHOOK_URL_CHARS or "\x00" in webhook
            return multiple()
        self.latest_lease[created.text] = None
        assert self._call("POST", "/enqueueTask", params={"id": created.text}).status_code == 200
        return created.text

    @rule(lease_seconds=st.one_of(st.just("30"), numbers))
    def claim_delivery(self, lease_seconds):
        answer = self._call("POST", "/claimDelivery", params={"lease_seconds": lease_seconds})
        if answer.status_code != 200:
            return
        delivery = answer.json
        assert State.from_code(delivery["task"]["state"]).ended, "only an ended job's is due"
        assert delivery["id"] not in self.settled
        self.delivery_lease[delivery["id"]] = delivery["lease"]

    @rule(
        task_id=st.one_of(tasks, valid_ids, values),
        lease=st.one_of(st.just("latest"), st.just("latest"), st.none(), values),
        status=st.one_of(st.sampled_from(["200", "500", "410"]), st.none(), numbers),
        error=st.one_of(st.none(), values),
        retry_in=st.one_of(st.just("0"), st.none(), numbers),
        at=st.one_of(st.just("1700000000"), st.none(), numbers),
    )
    def report_delivery(self, task_id, lease, status, error, retry_in, at):
        latest = self.delivery_lease.get(task_id)
        lease = latest if lease == "latest" else lease
        query = {"id": task_id, "lease": lease, "status": status, "error": error}
        query.update(retry_in=retry_in, at=at)
        answer = self._call(
            "POST", "/reportDelivery", params={k: v for k, v in query.items() if v is not None}
        )
        if answer.status_code != 200:
            return
        assert lease == latest, "a delivery report was taken from a lease not the latest"
        self.delivery_lease[task_id] = None
        if answer.json["state"] != "pending":
            self.settled[task_id] = answer.json

    @rule(
        target=tasks,
        key=st.one_of(st.sampled_from(["k1", "k2"]), values),
        sha=st.one_of(st.none(), st.just("ab" * 32), values),
    )
    def create_with_key(self, key, sha):
        created = self._call("POST", "/newTask", params={"pipeline": "swap", "idempotencyKey": key})
        if created.status_code == 400:
            assert IDEMPOTENCY_KEY_PATTERN.fullmatch(key) is None
            return multiple()
        if created.status_code == 200:  # the key's first task: no new one
            assert created.json["id"] in self.keyed[key] and created.json["pipeline"] == "swap"
            return multiple()
        self.keyed.setdefault(key, set()).add(created.text)
        self.latest_lease[created.text] = None
        query = {"id": created.text} if sha is None else {"id": created.text, "bodySha256": sha}
        self._call("POST", "/enqueueTask", params=query)
        return created.text

    @rule(task_id=st.one_of(tasks, valid_ids, values))
    def cancel(self, task_id):
        answer = self._call("POST", "/cancelTask", params={"id": task_id})
        if answer.status_code == 200:
            assert answer.json["stateName"] == "cancelled"
            self.cancelled.setdefault(task_id, answer.json)
            assert task_id not in self.finished
        elif answer.status_code == 409:
            assert self._get(task_id)["stateName"] in ("finished", "failed")

    @rule(task_id=st.one_of(tasks, valid_ids, nasty))
    def enqueue(self, task_id):
        self._call("POST", "/enqueueTask", params={"id": task_id})

    @rule(task_id=tasks)
    def work(self, task_id):
        """A well-behaved worker: claim whatever comes, then finish it with its lease."""
        self.claim(wait=None)
        self.act_on_lease(task_id, "/finishTask", "latest", None, None, None)

    @rule(wait=st.one_of(st.none(), numbers))
    def claim(self, wait):
        answer = self._call("POST", "/getNewTask", params={} if wait is None else {"wait": wait})
        if answer.status_code != 200:
            return
        task = answer.json
        assert task["state"] == State.IN_PROGRESS.code and task["lease"]
        assert 1 <= task["attempts"] <= MAX_ATTEMPTS
        assert task["id"] not in self.finished
        self.latest_lease[task["id"]] = task["lease"]

    @rule(
        task_id=tasks,
        route=st.sampled_from(["/heartbeat", "/finishTask", "/failTask", "/releaseTask"]),
        lease=st.one_of(st.just("latest"), st.just("latest"), st.none(), values),
        error=st.one_of(st.just("it broke"), st.none(), values),
        retry=st.one_of(st.sampled_from(["true", "false"]), st.none(), values),
        stages=st.one_of(st.none(), stage_lists),
    )
    def act_on_lease(self, task_id, route, lease, error, retry, stages):
        latest = self.latest_lease.get(task_id)
        lease = latest if lease == "latest" else lease
        query = {"id": task_id, "lease": lease, "error": error, "retry": retry, "stages": stages}
        answer = self._call("POST", route, params={k: v for k, v in query.items() if v is not None})
        if answer.status_code != 200:
            return
        if lease is not None:
            assert lease == latest, f"{route} accepted a lease that is not the latest"
        if route == "/finishTask":
            self.finished.setdefault(task_id, self._get(task_id))
        if route == "/releaseTask":
            self.latest_lease[task_id] = None

    @rule(
        task_id=st.one_of(tasks, valid_ids, values),
        state=st.one_of(st.integers(-3, 5), st.booleans(), st.none(), values, st.floats()),
        shape=st.sampled_from(["object", "no-id", "list", "raw", "text/plain"]),
        raw=st.binary(max_size=40),
    )
    def set_by_id(self, task_id, state, shape, raw):
        body = {"id": task_id, "state": state}
        kwargs: dict = {"json": body}
        if shape == "no-id":
            kwargs = {"json": {"state": state}}
        elif shape == "list":
            kwargs = {"json": [task_id, state]}
        elif shape == "raw":
            kwargs = {"body": raw, "content_type": falcon.MEDIA_JSON}
        elif shape == "text/plain":
            kwargs = {"body": raw, "content_type": falcon.MEDIA_TEXT}
        answer = self._call("POST", "/setById", **kwargs)
        if answer.status_code == 200 and state in (0,) and task_id in self.latest_lease:
            self.latest_lease[task_id] = None  # a retried task has no lease
        if answer.status_code == 200 and state == 4 and shape == "object":
            self.cancelled.setdefault(task_id, self._get(task_id))

    @rule(task_id=st.one_of(tasks, valid_ids, values))
    def get(self, task_id):
        answer = self._call("GET", "/getById", params={"id": task_id})
        if answer.status_code == 200:
            assert answer.json["id"] == task_id
            assert answer.json["stateName"] == State.from_code(answer.json["state"]).value

    @rule(limit=st.one_of(st.none(), numbers), accept=st.one_of(st.none(), header_values))
    def list(self, limit, accept):
        query = {} if limit is None else {"limit": limit}
        extra = {} if accept is None else {"Accept": accept}
        self._call("GET", "/list", params=query, headers=extra)

    @rule(
        task_id=st.one_of(tasks, valid_ids, values),
        after=st.one_of(st.none(), st.integers(-2, 40).map(str), numbers),
        wait=st.one_of(st.none(), numbers),
    )
    def events(self, task_id, after, wait):
        query = {"id": task_id, "after": after, "wait": wait}
        answer = self._call(
            "GET", "/events", params={k: v for k, v in query.items() if v is not None}
        )
        if answer.status_code == 200:
            numbers_seen = [event["id"] for event in answer.json]
            assert numbers_seen == sorted(set(numbers_seen))
            assert all(number > int(after or 0) for number in numbers_seen)

    @rule(seconds=st.floats(0, 2 * LEASE_SECONDS))
    def advance_clock(self, seconds):
        self.clock.now += seconds

    @anything_rule([*sorted({p for _, p in DATABASE_ROUTES}), "/", "/nope", "/list/"])
    def anything(self, method, path, query, body, extra):
        self._call_anything(method, path, query, body, extra)

    def _get(self, task_id: str) -> dict:
        return self._call("GET", "/getById", params={"id": task_id}).json

    @invariant()
    def finished_tasks_never_change(self):
        for task_id, first in self.finished.items():
            now = self._get(task_id)
            assert now["stateName"] == "finished", (task_id, first, now)
            assert now["finishedAt"] == first["finishedAt"]

    @invariant()
    def settled_deliveries_never_change(self):
        for task_id, first in self.settled.items():
            assert self._get(task_id)["webhook"] == first

    @invariant()
    def cancelled_tasks_never_change(self):
        for task_id, first in self.cancelled.items():
            now = self._get(task_id)
            assert now["stateName"] == "cancelled", (task_id, first, now)
            assert now["finishedAt"] == first["finishedAt"]

    @invariant()
    def events_are_numbered_from_1_and_tell_the_state_written(self):
        for task in self.store.recent(10_000):  # the rows as written (no lapse applied)
            events = self.store.events(task.id)
            assert [event.sequence for event in events] == list(range(1, len(events) + 1))
            states = [event.data["state"] for event in events if event.kind == "state"]
            assert states[0] == "uploading" and states[-1] == task.state.value

    @invariant()
    def attempts_are_bounded(self):
        for task in self.store.recent(10_000):
            assert 0 <= task.attempts <= MAX_ATTEMPTS
            ended_for_good = task.state in (State.FINISHED, State.CANCELLED)
            assert ended_for_good == (task.finished_at is not None) or (task.state == State.FAILED)


TestDatabaseProperties = DatabaseMachine.TestCase
TestDatabaseProperties.settings = STATE_MACHINE_SETTINGS


class PostgresDatabaseMachine(DatabaseMachine):
    """The same, on the PostgreSQL store: one database for the test, emptied for each run."""

    url: ClassVar[str] = ""

    def open_store(self, policy: LeasePolicy) -> TaskStore:
        store = PostgresTaskStore(self.url, policy, self.clock)
        with psycopg.connect(self.url) as conn:
            conn.execute("TRUNCATE tasks, idempotency_keys CASCADE")
        return store


@pytest.fixture
def postgres_machine(postgres_url) -> Iterator[None]:
    PostgresDatabaseMachine.url = postgres_url
    yield
    PostgresDatabaseMachine.url = ""


TestPostgresDatabaseProperties = pytest.mark.usefixtures("postgres_machine")(
    PostgresDatabaseMachine.TestCase
)
TestPostgresDatabaseProperties.settings = STATE_MACHINE_SETTINGS


# -- storage ------------------------------------------------------------------------------

STORAGE_ROUTES = {
    ("POST", "/sendImage"): {201, 400, 413},
    ("GET", "/getImage"): {200, 400, 404},
    ("DELETE", "/deleteImage"): {204, 400, 404},
}
MAX_UPLOAD = 200
MAX_RESULT = 400


class StorageMachine(AppMachine):
    """Random writes, reads and deletes; the folders must hold exactly what the model says."""

    routes = STORAGE_ROUTES

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.root = Path(self._dir.name) / "data"
        config = Config(
            data_dir=self.root, max_upload_bytes=MAX_UPLOAD, max_result_bytes=MAX_RESULT
        )
        self.client = testing.TestClient(create_storage_app(config, FileImageStore(self.root)))
        self.files: dict[tuple[str, str], bytes] = {}
        self.ids: list[str] = []

    def teardown(self) -> None:
        self._dir.cleanup()

    @initialize(ids=st.lists(valid_ids, min_size=1, max_size=3, unique=True))
    def some_ids(self, ids):
        self.ids = ids

    def _id(self, data) -> str:
        return data.draw(st.one_of(st.sampled_from(self.ids), valid_ids, values))

    @rule(
        data=st.data(),
        state=st.one_of(st.sampled_from(["working", "finished"]), values),
        body=st.one_of(st.binary(max_size=MAX_RESULT + 50), st.just(png_bytes((4, 4)))),
        length=st.one_of(st.none(), content_lengths),
    )
    def send(self, data, state, body, length):
        task_id = self._id(data)
        extra = {} if length is None else {"Content-Length": length}
        params = {"id": task_id, "state": state}
        answer = self._call("POST", "/sendImage", params=params, body=body, headers=extra)
        # the server reads as many bytes as the request says it has
        received = body if length is None else body[: int(length)]
        limit = MAX_UPLOAD if state == "working" else MAX_RESULT
        too_large = len(received) > limit or (length is not None and int(length) > limit)
        if answer.status_code == 201:
            assert state in ("working", "finished") and TASK_ID_PATTERN.fullmatch(task_id)
            assert not too_large
            self.files[(state, task_id)] = received
        elif answer.status_code == 413:
            assert too_large

    @rule(data=st.data(), state=st.one_of(st.sampled_from(["working", "finished"]), values))
    def get(self, data, state):
        task_id = self._id(data)
        answer = self._call("GET", "/getImage", params={"id": task_id, "state": state})
        stored = self.files.get((state, task_id))
        if stored is None:
            assert answer.status_code in (400, 404)
        else:
            assert answer.status_code == 200 and answer.content == stored

    @rule(data=st.data(), state=st.one_of(st.sampled_from(["working", "finished"]), values))
    def delete(self, data, state):
        task_id = self._id(data)
        answer = self._call("DELETE", "/deleteImage", params={"id": task_id, "state": state})
        existed = self.files.pop((state, task_id), None) is not None
        assert (answer.status_code == 204) == existed

    @anything_rule(["/sendImage", "/getImage", "/deleteImage", "/", "/x/../getImage"])
    def anything(self, method, path, query, body, extra):
        answer = self._call_anything(method, path, query, body, extra)
        if answer.status_code in (201, 204):
            # the model cannot tell which file a raw query wrote or deleted: read it back
            self.files = {
                (folder, path.name): path.read_bytes()
                for folder in ("working", "finished")
                for path in (self.root / folder).iterdir()
            }

    @invariant()
    def folders_hold_exactly_the_model(self):
        on_disk = {}
        for entry in self.root.rglob("*"):
            relative = entry.relative_to(self.root)
            if entry.is_dir():
                assert str(relative) in ("working", "finished"), relative
                continue
            assert not entry.name.startswith(TEMP_PREFIX), f"temporary file left: {relative}"
            assert len(relative.parts) == 2 and TASK_ID_PATTERN.fullmatch(entry.name), relative
            on_disk[(relative.parts[0], entry.name)] = entry.read_bytes()
        assert on_disk == self.files


TestStorageProperties = StorageMachine.TestCase
TestStorageProperties.settings = STATE_MACHINE_SETTINGS


# -- registry -----------------------------------------------------------------------------

REGISTRY_ROUTES = {
    ("GET", "/get"): {200, 400, 404},
    ("POST", "/set"): {200, 400, 413},
    ("DELETE", "/remove"): {200, 400, 404},
    ("GET", "/list"): {200},
}
keys = st.one_of(
    st.sampled_from(["databaseAddress", "storageAddress", "masterAddress", "a.b-c_d"]),
    st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=10),
    values,
)


class RegistryMachine(AppMachine):
    routes = REGISTRY_ROUTES

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "registry.json"
        config = Config(data_dir=Path(self._dir.name))
        self.client = testing.TestClient(create_registry_app(config, FileKeyValueStore(self.path)))
        self.model: dict[str, str] = {}

    def teardown(self) -> None:
        self._dir.cleanup()

    @rule(key=keys, value=st.one_of(values, st.just("127.0.0.1:3001")))
    def set(self, key, value):
        answer = self._call("POST", "/set", params={"key": key, "value": value})
        if answer.status_code == 200:
            self.model[key] = value

    @rule(key=keys)
    def get(self, key):
        answer = self._call("GET", "/get", params={"key": key})
        if key in self.model:
            assert answer.status_code == 200 and answer.text == self.model[key]
        else:
            assert answer.status_code in (400, 404)

    @rule(key=keys)
    def remove(self, key):
        answer = self._call("DELETE", "/remove", params={"key": key})
        assert (answer.status_code == 200) == (self.model.pop(key, None) is not None)

    @rule(accept=st.one_of(st.none(), header_values, st.just("application/json")))
    def list(self, accept):
        self._call("GET", "/list", headers={} if accept is None else {"Accept": accept})

    @anything_rule(["/get", "/set", "/remove", "/list", "/"])
    def anything(self, method, path, query, body, extra):
        answer = self._call_anything(method, path, query, body, extra)
        if answer.status_code == 200 and path in ("/set", "/remove"):
            self.model = self._listing()

    def _listing(self) -> dict[str, str]:
        return self._call("GET", "/list", headers={"Accept": "application/json"}).json

    @invariant()
    def holds_exactly_what_was_set(self):
        assert self._listing() == self.model
        # and a restart reads back the same
        assert FileKeyValueStore(self.path).items() == self.model


TestRegistryProperties = RegistryMachine.TestCase
TestRegistryProperties.settings = STATE_MACHINE_SETTINGS


# -- authentication -----------------------------------------------------------------------

TOKEN = "internal-token-for-tests"
API_KEY = "client-key"


def _authed_apps():
    root = Path(tempfile.mkdtemp(prefix="darkroom-auth-"))
    config = Config(data_dir=root, internal_token=TOKEN, api_keys=API_KEY)
    registry = create_registry_app(config, FileKeyValueStore(root / "registry.json"))
    storage = create_storage_app(config, FileImageStore(root / "data"))
    return testing.TestClient(registry), testing.TestClient(storage)


AUTHED_REGISTRY, AUTHED_STORAGE = _authed_apps()


CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")


def _authorization(secret: str, scheme: str) -> dict[str, str]:
    if scheme == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    if scheme == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"u:{secret}".encode()).decode()}
    return {"X-API-Key": secret}


@EXAMPLE_SETTINGS
@given(
    extra=headers.map(lambda h: {k: v for k, v in h.items() if k not in CREDENTIAL_HEADERS}),
    secret=st.one_of(st.just(TOKEN), st.just(API_KEY), header_values),
    scheme=st.sampled_from(["bearer", "basic", "x-api-key", "none"]),
)
def test_internal_routes_need_the_token_whatever_the_headers(extra, secret, scheme):
    sent = {**extra, **(_authorization(secret, scheme) if scheme != "none" else {})}
    for client, method, path in (
        (AUTHED_REGISTRY, "POST", "/set"),
        (AUTHED_STORAGE, "GET", "/getImage"),
    ):
        query = {"key": "k", "value": "v", "id": "A" * 22, "state": "working"}
        answer = client.simulate_request(method, path, params=query, headers=sent)
        assert answer.status_code < 500, answer.text
        if scheme == "none":
            assert answer.status_code == 401
        elif secret == TOKEN:
            assert answer.status_code in (200, 404), answer.text
        elif secret == API_KEY:
            assert answer.status_code == 403
        else:
            assert answer.status_code in (401, 403), (sent, answer.status)


@EXAMPLE_SETTINGS
@given(extra=headers, query=raw_query_strings())
def test_public_registry_reads_never_fail(extra, query):
    for path in ("/get", "/list", "/healthz", "/readyz"):
        answer = AUTHED_REGISTRY.simulate_get(path, query_string=query, headers=extra)
        assert answer.status_code in {200, 400, 404}, (path, answer.status, answer.text)
