"""Errors between services: an error answer becomes its type, and the type becomes an answer."""

from __future__ import annotations

import falcon
import falcon.testing
import pytest
import urllib3

from darkroom.contract.errors import (
    ServiceConflict,
    ServiceError,
    ServiceFailed,
    ServiceNotFound,
    ServiceUnavailable,
)
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.errors import UpstreamUnavailable, raise_for_upstream
from darkroom.core.transport import ErrorAnswer, Response


def _answer(status: int, body: bytes = b'{"title": "T", "description": "D"}') -> Response:
    headers = {"Content-Type": "application/json"}
    return Response(urllib3.HTTPResponse(body, headers, status, reason="Reason"))


@pytest.mark.parametrize(
    ("status", "kind", "answered"),
    [
        (400, ServiceError, 400),
        (404, ServiceNotFound, 404),
        (409, ServiceConflict, 409),
        (413, ServiceError, 413),
        (503, ServiceUnavailable, 503),
        (507, ServiceError, 507),
        (500, ServiceFailed, 502),
        (504, ServiceFailed, 502),
    ],
)
def test_an_error_answer_becomes_its_type(status: int, kind: type, answered: int) -> None:
    with pytest.raises(ServiceError) as caught:
        raise_for_upstream(_answer(status), "storage")
    assert type(caught.value) is kind
    assert isinstance(caught.value.__cause__, ErrorAnswer)
    assert caught.value.__cause__.response.status_code == status
    assert (caught.value.service, caught.value.status) == ("storage", answered)
    if kind is ServiceFailed:
        assert caught.value.title == "Upstream error"
        assert caught.value.description == f"The storage service failed ({status}): D"
    else:
        assert (caught.value.title, caught.value.description) == ("T", "D")


@pytest.mark.parametrize(("header", "kept"), [("1", 1), (" 30 ", 30), ("soon", None), ("", None)])
def test_an_error_keeps_the_answers_retry_after(header: str, kept: int | None) -> None:
    answer = _answer(409)
    answer.headers["Retry-After"] = header
    with pytest.raises(ServiceConflict) as caught:
        raise_for_upstream(answer, "master")
    assert caught.value.retry_after == kept


def test_a_success_raises_nothing() -> None:
    raise_for_upstream(_answer(204, b""), "storage")


def test_a_text_error_keeps_its_text() -> None:
    with pytest.raises(ServiceNotFound) as caught:
        raise_for_upstream(_answer(404, b"no such thing"), "master")
    assert (caught.value.title, caught.value.description) == ("Reason", "no such thing")


@pytest.mark.parametrize(
    ("header", "retry_after"),
    [("1", 1), (" 30 ", 30), (None, None), ("soon", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None)],
)
def test_a_503_keeps_its_retry_after(header: str | None, retry_after: int | None) -> None:
    # the frontend relayed the master's "Too many event streams" 503 without it
    answer = _answer(503)
    if header is not None:
        answer.headers["Retry-After"] = header
    with pytest.raises(ServiceUnavailable) as caught:
        raise_for_upstream(answer, "master")
    assert caught.value.retry_after == retry_after


class _Raises:
    def __init__(self, error: Exception) -> None:
        self._error = error

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise self._error


def _client(error: Exception) -> falcon.testing.TestClient:
    app = create_base_app(Config())
    app.add_route("/call", _Raises(error))
    return falcon.testing.TestClient(app)


def test_one_handler_answers_with_the_errors_status_and_text() -> None:
    result = _client(ServiceConflict("database", 409, "Task conflict", "lease lost")).simulate_get(
        "/call"
    )
    assert result.status_code == 409
    assert result.json == {"title": "Task conflict", "description": "lease lost"}
    assert "Retry-After" not in result.headers


def test_an_unreachable_service_is_a_503_to_retry() -> None:
    result = _client(UpstreamUnavailable("storage", "connection refused")).simulate_get("/call")
    assert result.status_code == 503
    assert result.headers["Retry-After"] == "1"
    assert result.json == {
        "title": "Service unavailable",
        "description": "The storage service is not reachable (connection refused).",
    }
