"""What ``core/server.py`` gives waitress: descriptor-sized connection limits, JSON refusals."""

from __future__ import annotations

import inspect
import json
import resource

import pytest
import requests
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.utilities import (
    BadRequest,
    InternalServerError,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    ServerNotImplemented,
)

from darkroom.core import server
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.server import (
    SMALL_BODY_BYTES,
    BodyTooLarge,
    JsonErrorTask,
    channel_class,
    connection_limit,
    raise_open_file_limit,
)
from support.processes import HOST, free_port


def test_connection_limit_leaves_room_for_threads_and_files():
    # 1024 descriptors (a common default) with 32 threads: what is left, three per connection
    assert connection_limit(1024, 32) == (1024 - server.FDS_RESERVED - 32 * 3) // 3
    limit = connection_limit(1024, 32)
    assert limit * server.FDS_PER_CONNECTION + server.FDS_RESERVED + 32 * 3 <= 1024


def test_connection_limit_is_bounded_both_ways():
    assert connection_limit(1_000_000, 32) == server.MAX_CONNECTIONS
    assert connection_limit(100, 32) == 16  # a tiny limit still serves a few


def test_open_file_limit_is_raised_towards_the_wanted_count_never_past_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        wanted = 512 if hard == resource.RLIM_INFINITY else min(512, hard)
        assert raise_open_file_limit(wanted) == wanted
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
        assert raise_open_file_limit(100) == wanted  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Recorder:
    """Just enough of a waitress channel for a task to write into."""

    def __init__(self, adj: Adjustments) -> None:
        self.server = type("Server", (), {"adj": adj})()
        self.written = b""

    def write_soon(self, data: bytes) -> int:
        self.written += data
        return len(data)


class Request:
    def __init__(self, error) -> None:
        self.error = error
        self.version = "1.1"
        self.headers: dict = {}
        self.command = "GET"
        self.path = "/"
        self.url_scheme = "http"


@pytest.mark.parametrize(
    ("error", "status", "title", "description"),
    [
        (
            RequestEntityTooLarge("exceeds max_body of 1048577"),
            "413 Request Entity Too Large",
            "Request body too large",
            "This route takes bodies of at most 1048576 bytes.",
        ),
        (
            RequestHeaderFieldsTooLarge("exceeds max_header of 65536"),
            "431 Request Header Fields Too Large",
            "Request headers too large",
            "The request line and headers must be under 65536 bytes.",
        ),
        (
            BadRequest("Invalid chunk size"),
            "400 Bad Request",
            "Malformed request",
            "Not a valid HTTP/1.1 request: Invalid chunk size.",
        ),
        (
            ServerNotImplemented("Transfer-Encoding requested is not supported."),
            "501 Not Implemented",
            "Not Implemented",
            "Transfer-Encoding requested is not supported.",
        ),
        (
            InternalServerError("The server encountered an unexpected internal server error"),
            "500 Internal Server Error",
            "Internal Server Error",
            "The server encountered an unexpected internal server error",
        ),
    ],
)
def test_waitress_refusals_are_json_in_the_apps_words(error, status, title, description):
    adj = Adjustments(max_request_body_size=1024 * 1024 + 1, max_request_header_size=65536)
    channel = Recorder(adj)
    task = JsonErrorTask(channel, Request(error))
    task.service()
    head, _, body = channel.written.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"HTTP/1.1 {status}"
    assert "Content-Type: application/json" in lines
    assert "X-Content-Type-Options: nosniff" in lines
    assert "Connection: close" in lines
    assert json.loads(body) == {"title": title, "description": description}


UPLOAD_LIMIT = 4 * SMALL_BODY_BYTES
RECV_BYTES = 256 * 1024


def parse(head: bytes, body: bytes = b""):
    """A request through the parser ``serve`` gives a role with one upload route, ``/new``."""
    parser = channel_class({"/new": UPLOAD_LIMIT}, spool_budget=0).parser_class(
        Adjustments(max_request_body_size=UPLOAD_LIMIT + 1)
    )
    data = head + body
    while data and not parser.completed:  # as the channel feeds it: recv_bytes at a time
        data = data[parser.received(data[:RECV_BYTES]) :]
    return parser


def refused_with(parser) -> str:
    assert parser.error is not None and parser.error.code == 413
    return server._describe(parser.error, parser.adj)[1]


def post(path: str, length: int) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path.encode(), length)


@pytest.mark.parametrize("path", ["/new", "/new/"])
def test_the_upload_route_takes_bodies_up_to_its_limit(path):
    parser = parse(post(path, UPLOAD_LIMIT), b"x" * UPLOAD_LIMIT)
    assert parser.error is None and parser.completed
    refused = parse(post(path, UPLOAD_LIMIT + 1))
    assert refused_with(refused) == f"This route takes bodies of at most {UPLOAD_LIMIT} bytes."


@pytest.mark.parametrize("path", ["/heartbeat", "/", "/newer"])
def test_other_routes_take_small_bodies_judged_from_the_length(path):
    assert parse(post(path, SMALL_BODY_BYTES), b"x" * SMALL_BODY_BYTES).error is None
    refused = parse(post(path, SMALL_BODY_BYTES + 1))  # no body sent: judged from the header
    assert isinstance(refused.error, BodyTooLarge)
    assert refused_with(refused) == f"This route takes bodies of at most {SMALL_BODY_BYTES} bytes."


def test_a_chunked_body_is_cut_off_at_the_small_limit():
    head = b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    parser = parse(head, chunk * 40)
    assert isinstance(parser.error, BodyTooLarge)
    assert parser.body_bytes_received <= SMALL_BODY_BYTES + RECV_BYTES


def test_the_waitress_method_bounded_here_is_still_the_one_that_waits():
    # DarkroomChannel replaces a private method of waitress 3.0.2: an upgrade that renames it
    # would silently bring back threads waiting forever on clients that do not read.
    assert "self._flush_outbufs_below_high_watermark()" in inspect.getsource(HTTPChannel.write_soon)


class Pending:
    """A channel as ``_must_wait`` sees it: its pending output, its server's connections."""

    def __init__(self, pending: int, others: list[int], budget: int) -> None:
        self.total_outbufs_len = pending
        self.adj = Adjustments(outbuf_high_watermark=100)
        self.spool_budget = budget
        everyone = [self, *(type("Other", (), {"total_outbufs_len": n})() for n in others)]
        self.server = type("Server", (), {"active_channels": dict(enumerate(everyone))})()

    must_wait = server.DarkroomChannel._must_wait


@pytest.mark.parametrize(
    ("pending", "others", "budget", "waits"),
    [
        (100, [10_000], 0, False),  # at the watermark: waitress would not wait either
        (150, [], 1000, False),  # past it, within the budget: handed over
        (150, [120, 90], 1000, False),  # 50 + 20 past the watermark in all
        (150, [1050], 1000, True),  # 50 + 950: the budget is spent
        (101, [], 0, True),  # no budget: waitress's own behaviour, with the wait bounded
    ],
)
def test_a_response_waits_only_past_the_watermark_and_the_spool_budget(
    pending, others, budget, waits
):
    assert Pending(pending, others, budget).must_wait() is waits


def test_the_health_listener_serves_the_probes_only() -> None:
    port = free_port()
    server.start_health_listener(create_base_app(Config()), HOST, port)
    assert requests.get(f"http://{HOST}:{port}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"http://{HOST}:{port}/readyz/", timeout=5).status_code == 200
    refused = requests.get(f"http://{HOST}:{port}/metrics", timeout=5)
    assert refused.status_code == 404
    assert refused.json()["description"] == "This port serves /healthz and /readyz only."
    assert refused.headers["X-Content-Type-Options"] == "nosniff"


def test_a_channel_whose_headers_are_overdue_stops_reading() -> None:
    channel = server.channel_class({}, spool_budget=0, header_seconds=0.0)
    request = channel.parser_class(Adjustments())
    request.received(b"GET /healthz HTTP/1.1\r\nHo")  # headers not finished
    stub = channel.__new__(channel)
    stub.request, stub.will_close = request, False
    assert stub.readable() is False and stub.will_close


class RecordingSocket:
    """A socket that has ``data`` to give and records the buffer sizes asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int] = []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        given, self.data = self.data[:size], self.data[size:]
        return given


def reads_asked(head: bytes, body: bytes) -> list[int]:
    """The recv() sizes a channel asks for while a request of ``head`` and ``body`` arrives."""
    channel = channel_class({"/new": UPLOAD_LIMIT}, spool_budget=0)
    stub = channel.__new__(channel)
    stub.socket = RecordingSocket(head + body)
    stub.request = channel.parser_class(Adjustments(max_request_body_size=UPLOAD_LIMIT + 1))
    while stub.socket.data and not stub.request.completed:
        data = stub.recv(RECV_BYTES)
        while data and not stub.request.completed:
            data = data[stub.request.received(data) :]
    return stub.socket.asked


def test_reads_are_small_for_headers_and_large_only_for_the_rest_of_a_large_body():
    # recv(256 KiB) maps and unmaps its buffer on every call (past glibc's mmap threshold):
    # 12 us more than a small read, for each request line and headers
    small = server.SMALL_RECV_BYTES
    assert reads_asked(b"GET /getById?id=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"") == [small]
    assert reads_asked(post("/heartbeat", 300), b"x" * 300) == [small]
    three_mb = 3 * SMALL_BODY_BYTES
    asked = reads_asked(post("/new", three_mb), b"x" * three_mb)
    assert asked[0] == small and len(asked) <= 2 + three_mb // RECV_BYTES  # 13 reads, not 48
    chunked = b"POST /new HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    asked = reads_asked(chunked, chunk * 16 + b"0\r\n\r\n")
    assert asked[0] == small and set(asked[1:]) == {RECV_BYTES}
