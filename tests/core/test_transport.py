"""Service calls on the wire: what is sent, connections reused and given back, failures typed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.core.discovery import ServiceClient, ServiceLocator
from darkroom.core.errors import UpstreamUnavailable
from darkroom.core.transport import ConnectionFailed, TimedOut, Transport
from harness.launch import HOST, free_port
from support.inprocess import StaticRegistry
from support.recording import RecordingServer


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture
def transport() -> Iterator[Transport]:
    transport = Transport(pool_size=2)
    yield transport
    transport.close()


def _chunks() -> Iterator[bytes]:
    yield b"abc"
    yield b"def"


def test_streamed_body_of_known_length_is_not_chunked(server, transport) -> None:
    headers = {"Content-Length": "6"}
    transport.send("POST", server.address, "/json", headers, data=_chunks()).close()
    (request,) = server.received
    assert request.headers["content-length"] == "6"
    assert "transfer-encoding" not in request.headers
    assert request.body == b"abcdef"


def test_streamed_body_of_unknown_length_is_chunked(server, transport) -> None:
    transport.send("POST", server.address, "/json", {}, data=_chunks()).close()
    (request,) = server.received
    assert request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in request.headers
    assert request.body == b"abcdef"


def test_query_parameters_skip_none_and_repeat_lists(server, transport) -> None:
    params = {"id": "abc", "wait": None, "note": ["a b", "c&d"]}
    transport.send("GET", server.address, "/json", {}, params=params).close()
    (request,) = server.received
    assert request.query == {"id": ["abc"], "note": ["a b", "c&d"]}


def test_only_the_headers_services_read_are_sent(server, transport) -> None:
    transport.send("GET", server.address, "/json", {"Authorization": "Bearer t"}).close()
    (request,) = server.received
    assert request.headers == {
        "host": server.address,
        "user-agent": "darkroom",
        "accept-encoding": "identity",
        "authorization": "Bearer t",
    }


def test_an_answer_read_whole_gives_its_connection_back(server, transport) -> None:
    for _ in range(3):
        response = transport.send("GET", server.address, "/json", {})
        assert (response.status_code, response.json()) == (200, {"ok": True})
    assert len({request.client_port for request in server.received}) == 1


def test_a_stream_read_to_its_end_gives_its_connection_back(server, transport) -> None:
    for _ in range(3):
        with transport.send(
            "GET", server.address, "/big", {}, params={"size": 300_000}, stream=True
        ) as response:
            assert b"".join(response.stream(64 * 1024)) == b"x" * 300_000
    assert len({request.client_port for request in server.received}) == 1


def test_a_stream_left_unread_drops_its_connection_and_the_next_call_is_clean(
    server, transport
) -> None:
    response = transport.send(
        "GET", server.address, "/big", {}, params={"size": 10**6}, stream=True
    )
    assert next(response.stream(1000)) == b"x" * 1000
    response.close()
    again = transport.send("GET", server.address, "/json", {})
    assert again.json() == {"ok": True}  # not the rest of the big body
    first, second = server.received
    assert first.client_port != second.client_port


def test_an_error_answer_is_read_and_its_connection_given_back(server, transport) -> None:
    with transport.send("GET", server.address, "/error", {}, stream=True) as response:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json()["title"] == "Busy"
    transport.send("GET", server.address, "/json", {}).close()
    assert len({request.client_port for request in server.received}) == 1


def test_head_answers_have_no_body_and_keep_the_connection(server, transport) -> None:
    with transport.send("HEAD", server.address, "/json", {}) as response:
        assert (response.status_code, response.content) == (200, b"")
    transport.send("GET", server.address, "/json", {}).close()
    assert len({request.client_port for request in server.received}) == 1


def test_no_listener_is_a_connection_failure_naming_the_call(transport) -> None:
    address = f"{HOST}:{free_port()}"
    with pytest.raises(ConnectionFailed) as failed:
        transport.send("POST", address, "/heartbeat", {}, params={"id": "a"}, timeout=2)
    assert "refused" in str(failed.value)
    assert f"POST http://{address}/heartbeat?id=a" in str(failed.value)


def test_a_hang_up_before_the_answer_is_a_connection_failure(server, transport) -> None:
    with pytest.raises(ConnectionFailed):
        transport.send("GET", server.address, "/hangup", {}, timeout=5)


def test_a_slow_answer_is_a_timeout(server, transport) -> None:
    with pytest.raises(TimedOut):
        transport.send("GET", server.address, "/slow", {}, timeout=0.2)


# -- ServiceClient: the address found again, one retry, the contract's errors ---------------


class ScriptedRegistry(StaticRegistry):
    """Answers each lookup with the next address of ``addresses`` (the last once they run out)."""

    def __init__(self, key: str, *addresses: str) -> None:
        super().__init__({})
        self._key, self._addresses_left = key, list(addresses)
        self.lookups = 0

    def get(self, key: str) -> str | None:
        assert key == self._key
        self.lookups += 1
        if len(self._addresses_left) > 1:
            return self._addresses_left.pop(0)
        return self._addresses_left[0]


def _client(registry: ScriptedRegistry, transport: Transport, timeout: float) -> ServiceClient:
    return ServiceClient(ServiceLocator(registry, ttl=60), registry._key, transport, timeout)


def test_a_failed_call_finds_the_moved_service_and_is_sent_again(server, transport) -> None:
    registry = ScriptedRegistry("storageAddress", f"{HOST}:{free_port()}", server.address)
    with _client(registry, transport, 2).request("GET", "/json", params={"id": "a"}) as answer:
        assert answer.json() == {"ok": True}
    assert registry.lookups == 2
    assert [request.query for request in server.received] == [{"id": ["a"]}]


def test_a_service_still_unreachable_is_unavailable(transport) -> None:
    registry = ScriptedRegistry("storageAddress", f"{HOST}:{free_port()}")
    with pytest.raises(UpstreamUnavailable) as failed:
        _client(registry, transport, 2).request("GET", "/json")
    assert failed.value.status == 503 and "storage" in failed.value.description
    assert isinstance(failed.value.__cause__, ConnectionFailed)
    assert registry.lookups == 2


def test_a_timeout_is_not_sent_again(server, transport) -> None:
    registry = ScriptedRegistry("databaseAddress", server.address)
    with pytest.raises(UpstreamUnavailable) as failed:
        _client(registry, transport, 0.2).request("GET", "/slow")
    assert "timed out" in failed.value.description
    assert len(server.received) == 1


def test_a_streamed_upload_is_not_sent_twice(transport) -> None:
    registry = ScriptedRegistry("storageAddress", f"{HOST}:{free_port()}")
    with pytest.raises(UpstreamUnavailable):
        _client(registry, transport, 2).request("POST", "/sendImage", data=_chunks())
    assert registry.lookups == 1


@pytest.mark.parametrize("role", ["database", "storage", "worker", "frontend"])
def test_roles_calling_services_do_not_load_requests(role: str) -> None:
    """Their calls go through urllib3 alone (the master loads requests for its webhook
    sender's CA bundle only; pyproject.toml's import contract covers its own modules)."""
    code = f"import sys, darkroom.{role}.service; sys.exit(10 if 'requests' in sys.modules else 0)"
    services = Path(__file__).resolve().parents[2] / "services"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(services)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
