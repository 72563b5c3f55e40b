"""Service calls: how bodies go on the wire."""

from __future__ import annotations

import requests

from darkroom.core.transport import send


class RecordingAdapter(requests.adapters.BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 204
        return response

    def close(self) -> None:
        pass


def _session() -> tuple[requests.Session, RecordingAdapter]:
    session = requests.Session()
    adapter = RecordingAdapter()
    session.mount("http://", adapter)
    return session, adapter


def _chunks() -> object:
    yield b"abc"
    yield b"def"


def test_streamed_body_of_known_length_is_not_chunked() -> None:
    session, adapter = _session()
    send(session, "POST", "http://storage/sendImage", {"Content-Length": "6"}, data=_chunks())
    (request,) = adapter.sent
    assert request.headers["Content-Length"] == "6"
    assert "Transfer-Encoding" not in request.headers


def test_streamed_body_of_unknown_length_is_chunked() -> None:
    session, adapter = _session()
    send(session, "POST", "http://storage/sendImage", {}, data=_chunks())
    (request,) = adapter.sent
    assert request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in request.headers


def test_query_parameters_skip_none() -> None:
    session, adapter = _session()
    send(session, "GET", "http://db/getById", {}, params={"id": "abc", "wait": None})
    assert adapter.sent[0].url == "http://db/getById?id=abc"
