"""Hostile traffic against issue 16's routes (``-m hostile``): event streams held past their
bound and never read, webhook receivers that hang, trickle or flood their answer, and floods of
Idempotency-Keys and bad ``/cancel`` calls, against real processes on 127.0.0.1.

Throughout, the probes (every role's health port) and the master's API answer within their
deadlines. No worker runs: jobs stay queued (their streams stay open), and a cancel ends a job
(its webhook delivery is due). The figures are the README's ("What Darkroom guarantees").
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests

from darkroom.contract.limits import MAX_IDEMPOTENCY_KEY_CHARS
from darkroom.core.ids import new_task_id
from darkroom.master.events import EventStreamPolicy
from support.images import png_bytes
from support.processes import HOST, Services, wait_until
from support.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

ROLES = ("registry", "database", "storage", "master", "frontend")
# Event-stream slots are a quarter of the threads: four on the master, two on the frontend,
# which must bound its relayed streams itself (a frontend may stand before several masters).
# The database's long-poll slots (half its threads) hold the master's four streams and its
# feed of ended tasks; with fewer, a stream polls each second and ends up to a second late.
THREADS = {"master": 16, "frontend": 8, "database": 16}
STREAM_SLOTS = {role: THREADS[role] // 4 for role in ("master", "frontend")}
# A stream ends after this and its client reconnects: one that reads nothing holds no longer.
EVENT_STREAM_SECONDS = 4
# The master's comment line on an idle stream: a client that left is noticed at the next one.
KEEPALIVE_SECONDS = EventStreamPolicy().keepalive_seconds
assert KEEPALIVE_SECONDS + 1 < EVENT_STREAM_SECONDS, "a slot back by the keep-alive, not the bound"
API_SECONDS = 2.0
# An attempt's connection and reads time out after this, the whole attempt after three times it.
WEBHOOK_TIMEOUT_SECONDS = 1
WEBHOOK_CONCURRENCY = 2
SECRET = "whsec_" + base64.b64encode(b"a hostile test secret").decode()
FLOOD_UPLOADS = 150
FLOOD_CANCELS = 300
HELD_OVER_THE_BOUND = 20
SHARED_KEY = "flood-shared"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("hostile-routes")
    running = Services(
        root / "data",
        root,
        api_keys="",
        threads="8",
        http_timeout_seconds="5",
        event_stream_seconds=str(EVENT_STREAM_SECONDS),
        webhook_secret=SECRET,
        webhook_allow_http="1",
        webhook_allow="127.0.0.0/8",  # the receivers are on 127.0.0.1
        webhook_timeout_seconds=str(WEBHOOK_TIMEOUT_SECONDS),
        webhook_concurrency=str(WEBHOOK_CONCURRENCY),
        webhook_backoff_seconds="0.5",
    )
    try:
        threads = {role: {"threads": str(count)} for role, count in THREADS.items()}
        running.start_with_health_ports(ROLES, threads)
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def probes(stack) -> Callable[[], None]:
    """Asserts every role's /healthz and /readyz, on its health port, answer within a second,
    and the master's /new and /status within API_SECONDS."""

    def assert_answering() -> None:
        stack.assert_probes_answer()
        task_id = upload(stack)
        answer, took = timed(
            requests.get, stack.url("master", "/status"), params={"id": task_id}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert took < API_SECONDS, f"/status took {took:.2f} s"
        answer, took = timed(
            requests.get, stack.url("frontend", "/status"), params={"id": task_id}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert took < API_SECONDS, f"the frontend's /status took {took:.2f} s"

    return assert_answering


def timed(call: Callable[..., requests.Response], *args, **kwargs):
    started = time.monotonic()
    answer = call(*args, **kwargs)
    return answer, time.monotonic() - started


def upload(stack: Services, **params: str) -> str:
    answer, took = timed(
        requests.post,
        stack.url("master", "/new"),
        data=png_bytes((8, 6)),
        params=params,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert took < API_SECONDS, f"/new took {took:.2f} s"
    return answer.text


def cancel(stack: Services, task_id: str) -> None:
    answer = requests.post(stack.url("master", "/cancel"), params={"id": task_id}, timeout=10)
    assert answer.status_code == 200, answer.text


# --- event streams -----------------------------------------------------------------------------


def open_stream(port: int, task_id: str, receive_buffer: int | None = None) -> socket.socket:
    """A raw ``GET /events`` whose answer is left to the caller to read (or not)."""
    sock = socket.socket()
    if receive_buffer is not None:  # before connecting, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((HOST, port))
    sock.sendall(f"GET /events?id={task_id} HTTP/1.1\r\nHost: darkroom\r\n\r\n".encode())
    return sock


class TrickleReader:
    """Reads a stream a byte every tenth of a second, from a thread, until ``close``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.wait(0.1):
            try:
                byte = self.sock.recv(1)
            except OSError:
                return
            if not byte:
                return
            self.received += byte

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def assert_no_slot(url: str, task_id: str) -> None:
    answer = requests.get(url, params={"id": task_id}, timeout=5)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Retry-After"] == "1"
    assert set(answer.json()) == {"title", "description"}


@pytest.mark.parametrize("role", ["master", "frontend"])
def test_held_unread_and_trickled_streams_are_bounded_and_come_back(stack, probes, role):
    wait_until(lambda: all_slots_free(stack, "master"), 10, "the master's slots to be free", 0.5)
    task_id = upload(stack)  # no worker: it stays queued, its stream stays open
    url = stack.url(role, "/events")
    port = stack.ports[role]
    with contextlib.ExitStack() as held:
        held.callback(cancel, stack, task_id)  # last: every stream of the job ends at once
        # the slots: a client that reads nothing (its window a few KiB), the others trickle
        unread = held.enter_context(open_stream(port, task_id, receive_buffer=4096))
        opened = time.monotonic()
        trickled = [
            TrickleReader(open_stream(port, task_id)) for _ in range(STREAM_SLOTS[role] - 1)
        ]
        for reader in trickled:
            held.callback(reader.close)
        began_reading = lambda: all(len(reader.received) >= 4 for reader in trickled)  # noqa: E731
        wait_until(began_reading, EVENT_STREAM_SECONDS / 2, "the trickled streams to begin")
        # more streams than the bound, opened and never read
        for _ in range(HELD_OVER_THE_BOUND):
            held.enter_context(open_stream(port, task_id, receive_buffer=4096))
        over = 0
        # well inside the held streams' time bound, which frees their slots
        while time.monotonic() - opened < EVENT_STREAM_SECONDS * 0.6 and over < 40:
            assert_no_slot(url, task_id)  # over the bound: 503, at once
            over += 1
            if over % 10 == 0:
                probes()
        assert over >= 10, f"only {over} streams were tried over the bound in time"
        probes()
        if role == "frontend":
            # the frontend refused those itself: the master's slots beyond its two stayed free
            master_free = STREAM_SLOTS["master"] - STREAM_SLOTS["frontend"]
            assert streams_accepted(stack.url("master", "/events"), task_id, master_free)
        for reader in trickled:
            reader.close()
        # The unread client still holds its connection: its stream is cut by its time bound,
        # and every slot comes back. (Each look is on a job cancelled after it: streams a look
        # took and left must not hold slots from the next look.)
        wait_until(
            lambda: all_slots_free(stack, role),
            EVENT_STREAM_SECONDS + 10,
            "the slots to come back",
            0.5,
        )
        assert unread.fileno() != -1, "the unread client held its connection throughout"
        print(f"{role}: every slot back {time.monotonic() - opened:.1f} s after they were taken")
    probes()


@pytest.mark.parametrize("role", ["master", "frontend"])
def test_streams_whose_clients_left_give_their_slots_back_at_the_next_keep_alive(stack, role):
    wait_until(lambda: all_slots_free(stack, role), 10, f"the {role}'s slots to be free", 0.5)
    task_id = upload(stack)  # no worker: it stays queued, its streams stay open
    try:
        opened = time.monotonic()
        assert streams_accepted(stack.url(role, "/events"), task_id, STREAM_SLOTS[role])
        # Those clients left at once. Their streams are noticed at the keep-alive after
        # KEEPALIVE_SECONDS, well before their time bound (EVENT_STREAM_SECONDS) would end them.
        wait_until(
            lambda: all_slots_free(stack, role),
            KEEPALIVE_SECONDS + 1 - (time.monotonic() - opened),
            "the slots of the clients that left to come back",
            0.2,
        )
        print(f"{role}: the slots were back {time.monotonic() - opened:.1f} s after being taken")
    finally:
        cancel(stack, task_id)


@pytest.mark.parametrize("role", ["master", "frontend"])
def test_long_polls_whose_clients_left_give_their_slots_back(stack, role):
    # The master sees its client leave at once; the frontend, which relays long polls in
    # slices, at the end of the slice in progress (its call to the master is still waiting).
    task_id = upload(stack)  # stays queued: every /isReady?wait= waits its whole time

    def a_poll_waits() -> bool:  # with no slot free, it is answered at once
        answer, took = timed(
            requests.get,
            stack.url(role, "/isReady"),
            params={"id": task_id, "wait": "1"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return took >= 0.9

    try:
        with contextlib.ExitStack() as held:
            # the long-poll slots are half the role's threads: all taken...
            for _ in range(THREADS[role] // 2):
                sock = held.enter_context(socket.create_connection((HOST, stack.ports[role])))
                request = f"GET /isReady?id={task_id}&wait=30 HTTP/1.1\r\nHost: darkroom\r\n\r\n"
                sock.sendall(request.encode())
            # (a request whose client left before it began is never run: wait until they run)
            wait_until(lambda: not a_poll_waits(), 10, "the polls to take every slot", 0.1)
        # ... then their clients go
        left = time.monotonic()
        wait_until(a_poll_waits, 10, "a long poll to wait in a slot again", 0.1)
        back = time.monotonic() - left
        assert back < 5, "not after their 30 s"
        print(f"{role}: the long polls' slots were back {back:.1f} s after their clients left")
    finally:
        cancel(stack, task_id)


def all_slots_free(stack: Services, role: str) -> bool:
    """Whether every stream slot of ``role`` is free (streams whose client left hold theirs
    until their next write or their time bound), on a job cancelled after, which ends them."""
    task_id = upload(stack)
    try:
        return streams_accepted(stack.url(role, "/events"), task_id, STREAM_SLOTS[role])
    finally:
        cancel(stack, task_id)


def streams_accepted(url: str, task_id: str, count: int) -> bool:
    """Whether ``count`` streams opened at once are all accepted."""
    with contextlib.ExitStack() as held:
        streams = [
            held.enter_context(requests.get(url, params={"id": task_id}, stream=True, timeout=5))
            for _ in range(count)
        ]
        return all(stream.status_code == 200 for stream in streams)


# --- webhooks ----------------------------------------------------------------------------------


class HostileReceiver:
    """A webhook receiver on 127.0.0.1 that ``hang``s (reads the request, never answers),
    ``trickle``s its answer (a byte every half second) or answers a ``huge`` body."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1)
            with contextlib.suppress(TimeoutError):
                conn.recv(65536)
            if self.behaviour == "hang":
                self._stop.wait(30)
            elif self.behaviour == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                    if self._stop.wait(0.5):
                        return
                    conn.sendall(bytes([byte]))
            else:  # huge: a gigabyte announced, sent as fast as it is taken
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
                chunk = b"x" * 65536
                deadline = time.monotonic() + 30
                while not self._stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(chunk)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def receivers() -> Iterator[dict[str, HostileReceiver | Receiver]]:
    running: dict[str, HostileReceiver | Receiver] = {
        name: HostileReceiver(name) for name in ("hang", "trickle", "huge")
    }
    running["good"] = Receiver()
    try:
        yield running
    finally:
        for receiver in running.values():
            receiver.close()


def webhook_of(stack: Services, task_id: str) -> dict:
    answer = requests.get(stack.url("master", "/status"), params={"id": task_id}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["webhook"]


def test_hanging_trickling_and_flooding_receivers_leave_other_deliveries_arriving(
    stack, probes, receivers
):
    hostile = {
        name: [upload(stack, webhook=receivers[name].url()) for _ in range(2)]
        for name in ("hang", "trickle", "huge")
    }
    good = [upload(stack, webhook=receivers["good"].url("/hook")) for _ in range(3)]
    began = time.monotonic()
    for task_id in [*hostile["hang"], *hostile["trickle"], *hostile["huge"], *good]:
        cancel(stack, task_id)  # the job ends: its delivery is due
    # Every hostile attempt is cut after three timeouts; the good ones wait behind at most
    # the six hostile attempts, two at a time.
    deadline = 3 * 3 * WEBHOOK_TIMEOUT_SECONDS + 10
    while len(receivers["good"].received) < len(good):
        assert time.monotonic() - began < deadline, "the good deliveries did not arrive"
        probes()
        time.sleep(0.2)
    arrived = time.monotonic() - began
    for task_id in good:
        wait_for_webhook(stack, task_id, lambda webhook: webhook["state"] == "delivered")
    # The hanging and trickling attempts were cut, recorded as failed, and are retried.
    for task_id in hostile["hang"] + hostile["trickle"]:
        webhook = wait_for_webhook(stack, task_id, lambda webhook: webhook["attempts"] >= 2)
        assert webhook["state"] == "pending", webhook
        for attempt in webhook["last"]:
            assert attempt["status"] is None, webhook
            assert "timed out" in attempt["error"] or "no whole answer" in attempt["error"]
    # A huge answer is not read: its status counts.
    for task_id in hostile["huge"]:
        wait_for_webhook(stack, task_id, lambda webhook: webhook["state"] == "delivered")
    probes()
    print(f"good deliveries arrived {arrived:.1f} s after the cancels")


def wait_for_webhook(stack: Services, task_id: str, wanted: Callable[[dict], bool]) -> dict:
    def reached() -> dict | None:
        webhook = webhook_of(stack, task_id)
        return webhook if wanted(webhook) else None

    return wait_until(reached, 30, f"the webhook of {task_id}", 0.2)


# --- floods ------------------------------------------------------------------------------------


def test_a_flood_of_idempotency_keys_and_bad_cancels_gets_only_clear_4xx(stack, probes):
    bad_keys = ["bad key", "k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "\xe9t\xe9"]

    def keyed_upload(number: int) -> int:
        if number % 10 == 0:  # one key, a different body each time: one job, then 409 or 422
            key = SHARED_KEY
        elif number % 10 < 4:
            key = bad_keys[number % len(bad_keys)]
        else:
            key = f"flood-{uuid.uuid4()}"
        answer = requests.post(
            stack.url("master", "/new"),
            data=png_bytes((8, 6), seed=number),
            headers={"Idempotency-Key": key},
            timeout=10,
        )
        if answer.status_code != 200:
            assert_clear_error(answer)
        return answer.status_code

    bad_ids = ["", "x", "../etc/passwd", "a" * 2000, "%00", "1;DROP TABLE tasks"]

    def bad_cancel(number: int) -> int:
        task_id = new_task_id() if number % 2 else bad_ids[number % len(bad_ids)]
        answer = requests.post(stack.url("master", "/cancel"), params={"id": task_id}, timeout=10)
        assert_clear_error(answer)
        return answer.status_code

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        uploads = pool.map(keyed_upload, range(FLOOD_UPLOADS))
        cancels = pool.map(bad_cancel, range(FLOOD_CANCELS))
        probes()  # while the flood is in flight
        statuses = [*uploads, *cancels]
    took = time.monotonic() - began
    assert set(statuses) <= {200, 400, 404, 409, 422}, sorted(set(statuses))
    good_keys = sum(1 for number in range(FLOOD_UPLOADS) if number % 10 >= 4)
    assert statuses.count(200) == good_keys + 1  # the shared key's one job
    probes()
    print(f"{FLOOD_UPLOADS} uploads and {FLOOD_CANCELS} cancels in {took:.1f} s")


def assert_clear_error(answer: requests.Response) -> None:
    assert 400 <= answer.status_code < 500, f"{answer.status_code}: {answer.text}"
    assert answer.headers["Content-Type"].startswith("application/json"), answer.text
    assert set(answer.json()) == {"title", "description"}, answer.text
