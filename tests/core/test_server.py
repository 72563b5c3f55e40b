"""What ``core/server.py`` gives waitress: descriptor-sized connection limits, JSON refusals."""

from __future__ import annotations

import json
import resource

import pytest
from waitress.adjustments import Adjustments
from waitress.utilities import (
    BadRequest,
    InternalServerError,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    ServerNotImplemented,
)

from darkroom.core import server
from darkroom.core.server import JsonErrorTask, connection_limit, raise_open_file_limit


def test_connection_limit_leaves_room_for_threads_and_files():
    # 1024 descriptors (a common default) with 32 threads: what is left, two per connection
    assert connection_limit(1024, 32) == (1024 - server.FDS_RESERVED - 32 * 3) // 2
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
            "This service takes bodies of at most 1048576 bytes.",
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
