"""Hostile traffic against real processes on 127.0.0.1: floods, oversized bodies, cut forms.

Each test reproduces an item of issue 13 over real sockets and asserts the role survives it
and answers it as the app would (JSON, ``nosniff``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from urllib3.filepost import encode_multipart_formdata

from support.images import png_bytes
from support.openfiles import open_files_for
from support.processes import HOST, Services, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

# More idle connections than select() takes descriptors (1024), yet few enough to stay quick.
FLOOD_CONNECTIONS = 1100
# The test's own descriptors: the flood plus its files, within the hard limit.
# Long enough that waitress does not cut the flood as idle (twice this) while the test runs.
HTTP_TIMEOUT_SECONDS = 30
SMALL_BODY_BYTES = 1024 * 1024  # what core/server.py lets routes that take no image take
BIG_BODY_BYTES = 40 * 1024 * 1024
PROBE_SECONDS = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Services]:
    """Every role but the worker: nothing here needs a job processed."""
    root = tmp_path_factory.mktemp("hostile")
    running = Services(
        root / "data", root, http_timeout_seconds=str(HTTP_TIMEOUT_SECONDS), api_keys=""
    )
    try:
        for role in ("registry", "database", "storage", "master", "frontend"):
            running.start(role)
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def open_files() -> Iterator[None]:
    """Raise this process's soft descriptor limit for the flood (bounded by the hard limit)."""
    with open_files_for(FLOOD_CONNECTIONS + 100):
        yield


def descriptors_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def probe(services: Services, role: str) -> int:
    return requests.get(services.url(role, "/healthz"), timeout=PROBE_SECONDS).status_code


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes or ``timeout`` passes."""
    received = b""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def status_and_json(answer: bytes) -> tuple[int, dict, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, f"not an HTTP answer: {answer[:200]!r}"
    return int(match.group(1)), json.loads(body), head.decode("latin-1").lower()


@pytest.mark.parametrize("role", ["master", "frontend"])
def test_idle_connections_past_select_limit_do_not_crash_the_role(stack, open_files, role):
    process = stack.processes[role].process
    with contextlib.ExitStack() as held:
        flood = [
            held.enter_context(socket.create_connection((HOST, stack.ports[role]), timeout=10))
            for _ in range(FLOOD_CONNECTIONS)
        ]

        def accepted_all() -> bool:
            # waitress has accepted them all: its descriptors are past what select() can watch
            assert process.poll() is None, f"{role} exited with {process.returncode}"
            return descriptors_of(process.pid) > FLOOD_CONNECTIONS

        wait_until(accepted_all, 30, f"{role} accepting {FLOOD_CONNECTIONS} connections", 0.1)
        assert probe(stack, role) == 200
        # the newest connection (a descriptor over 1024 in the role) is served too
        flood[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: darkroom\r\nConnection: close\r\n\r\n")
        assert read_answer(flood[-1], 10).startswith(b"HTTP/1.1 200 ")
        assert process.poll() is None, f"{role} exited with {process.returncode}"
    assert probe(stack, role) == 200
    assert process.poll() is None


@pytest.mark.parametrize(
    ("role", "path"),
    [
        ("database", "/setById"),
        ("registry", "/set"),
        # the roles that take images take them on their upload route only
        ("master", "/getNewTask"),
        ("frontend", "/status"),
        ("storage", "/deleteImage"),
    ],
)
def test_big_unauthenticated_body_is_refused_from_its_length_alone(stack, role, path):
    with socket.create_connection((HOST, stack.ports[role]), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: darkroom\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), BIG_BODY_BYTES)
        )
        answer = read_answer(sock, 10)  # not one body byte sent
        elapsed = time.monotonic() - started
    status, error, headers = status_and_json(answer)
    assert status == 413
    assert error == {
        "title": "Request body too large",
        "description": f"This route takes bodies of at most {SMALL_BODY_BYTES} bytes.",
    }
    assert "x-content-type-options: nosniff" in headers
    assert elapsed < 2.0
    assert probe(stack, role) == 200


def test_chunked_body_is_cut_off_at_the_small_limit(stack):
    """Without a length, the database reads at most its limit before refusing, never 40 MiB."""
    chunk = b"x" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with socket.create_connection((HOST, stack.ports["database"]), timeout=10) as sock:
        sock.sendall(
            b"POST /setById HTTP/1.1\r\nHost: darkroom\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < BIG_BODY_BYTES and not select.select([sock], [], [], 0)[0]:
                sock.sendall(framed)
                sent += len(chunk)
        answer = read_answer(sock, 10)
    assert status_and_json(answer)[0] == 413
    # what was sent past the limit sits in the kernel's socket buffers (a few MiB on loopback)
    assert sent < BIG_BODY_BYTES / 4, f"{sent} bytes were taken before the refusal"


def test_form_whose_closing_boundary_never_comes_is_refused(stack):
    body, content_type = encode_multipart_formdata(
        [("op", "flip"), ("uploadfile", ("photo.png", png_bytes(), "image/png"))]
    )
    boundary = content_type.partition("boundary=")[2].encode()
    cut = body[: body.rindex(b"\r\n--" + boundary)]
    response = requests.post(
        stack.url("frontend", "/submitTask"),
        data=cut,
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["title"] == "Malformed form"
    token = stack.env["DARKROOM_INTERNAL_TOKEN"]
    listed = requests.get(
        stack.url("database", "/list"),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=10,
    )
    assert listed.status_code == 200
    assert listed.json() == [], "a task was made from the cut form"


@pytest.mark.parametrize("role", ["registry", "database", "storage", "master", "frontend"])
@pytest.mark.parametrize("path", ["/healthz", "/no-such-route"])
def test_every_role_answers_nosniff(stack, role, path):
    response = requests.get(stack.url(role, path), timeout=10)
    assert response.status_code in (200, 404)
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_public_503_names_no_internal_address(tmp_path):
    """The frontend, its master registered at an address where nothing listens."""
    services = Services(tmp_path / "data", tmp_path, api_keys="")
    dead_port = free_port()
    dead = f"{HOST}:{dead_port}"
    try:
        services.start("registry")
        token = services.env["DARKROOM_INTERNAL_TOKEN"]
        registered = requests.post(
            services.url("registry", "/set"),
            params={"key": "masterAddress", "value": dead},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert registered.status_code == 200, registered.text
        services.start("frontend", wait=False)
        wait_until(lambda: answers_200(services, "frontend"), 30, "frontend /healthz")
        response = requests.get(
            services.url("frontend", "/status"), params={"id": "A" * 22}, timeout=10
        )
        ready = requests.get(services.url("frontend", "/readyz"), timeout=10)
    finally:
        services.stop_all()
    assert response.status_code == 503
    assert response.json()["description"].startswith("The master service is not reachable (")
    for answer in (response, ready):
        assert HOST not in answer.text and "HTTPConnectionPool" not in answer.text, answer.text
    log = (tmp_path / "frontend.log").read_text()
    assert f"port={dead_port}" in log  # the operator still sees where it tried


def answers_200(services: Services, role: str) -> bool:
    try:
        return probe(services, role) == 200
    except requests.RequestException:
        return False


# Slow readers ---------------------------------------------------------------------------------

SLOW_THREADS = 4  # server threads of the master below: a few stalled downloads would take all
RESULT_BYTES = 24 * 1024 * 1024  # over waitress's default 16 MiB output watermark
STALLED_DOWNLOADS = 2 * SLOW_THREADS
PROBING_SECONDS = 3.0


@pytest.fixture(scope="module")
def big_result(tmp_path_factory) -> Iterator[tuple[Services, str]]:
    """A finished job whose result is larger than 16 MiB; each test starts its own master.

    The fixture plays the worker through the internal API: claim, store the result, finish.
    """
    root = tmp_path_factory.mktemp("slow-readers")
    running = Services(root / "data", root, api_keys="", threads=str(SLOW_THREADS))
    token = {"Authorization": f"Bearer {running.env['DARKROOM_INTERNAL_TOKEN']}"}
    try:
        for role in ("registry", "database", "storage", "master"):
            running.start(role)
        task_id = requests.post(running.url("master", "/new"), data=png_bytes(), timeout=10).text
        claim = requests.post(
            running.url("master", "/getNewTask"), params={"wait": 0}, headers=token, timeout=10
        ).json()
        assert claim["id"] == task_id
        stored = requests.post(
            running.url("storage", "/sendImage"),
            params={"id": task_id, "state": "finished"},
            data=png_bytes() + os.urandom(RESULT_BYTES),  # a PNG's head, then noise
            headers=token,
            timeout=30,
        )
        assert stored.status_code == 201, stored.text
        finished = requests.post(
            running.url("master", "/registerTaskFinished"),
            params={"id": task_id, "lease": claim["lease"]},
            headers=token,
            timeout=10,
        )
        assert finished.status_code == 200, finished.text
        running.stop("master")
        yield running, task_id
    finally:
        running.stop_all()


def stalled_download(services: Services, path: str, role: str = "master") -> socket.socket:
    """A client that asks ``role`` for ``path`` and then reads nothing at all."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, services.ports[role]))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: darkroom\r\n\r\n".encode())
    return sock


def keeps_answering(services: Services, seconds: float, role: str = "master") -> None:
    """Every probe of ``role`` for ``seconds`` answers within PROBE_SECONDS."""
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        assert probe(services, role) == 200
        if time.monotonic() > deadline:
            return


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) what the server sent; True when it closed the connection in time."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(1024 * 1024):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize(
    ("role", "path", "on_volume"),
    [("master", "/get", False), ("master", "/get", True), ("frontend", "/getImage", False)],
    ids=["master", "master-on-volume", "frontend"],
)
def test_clients_that_never_read_a_large_download_hold_no_thread(big_result, role, path, on_volume):
    """Within the spool budget, the results are handed to waitress whole (from the volume: as
    the file itself): the threads are free while the clients stall."""
    services, task_id = big_result
    roles = ["master"] if role == "master" else ["master", "frontend"]
    volume = {"storage_volume": str(services.data_dir)} if on_volume else {}
    for started in roles:
        services.start(started, **(volume if started == "master" else {}))
    try:
        with contextlib.ExitStack() as held:
            for _ in range(STALLED_DOWNLOADS):
                held.enter_context(stalled_download(services, f"{path}?id={task_id}", role))
            keeps_answering(services, PROBING_SECONDS, role)
            whole = requests.get(services.url(role, f"{path}?id={task_id}"), timeout=30)
            assert whole.status_code == 200 and len(whole.content) > RESULT_BYTES
    finally:
        for started in reversed(roles):
            services.stop(started)


def test_a_response_waiting_on_a_client_that_reads_nothing_is_cut_off(big_result):
    """Over the spool budget, a response waits for its client, at most the idle timeout."""
    services, task_id = big_result
    # a 2 s idle cut-off; a spool budget of one largest result, 1 MiB, far below the stalls'
    services.start("master", http_timeout_seconds="1", max_result_bytes=str(1024 * 1024))
    try:
        with contextlib.ExitStack() as held:
            stalled = [
                held.enter_context(stalled_download(services, f"/get?id={task_id}"))
                for _ in range(STALLED_DOWNLOADS)
            ]
            started = time.monotonic()
            wait_until(
                lambda: answers_200(services, "master"), 30, "master /healthz past the stall"
            )
            assert time.monotonic() - started < 15
            assert all(closed_by_server(sock, 30) for sock in stalled)
        keeps_answering(services, 1)
    finally:
        services.stop("master")
