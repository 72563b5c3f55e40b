"""An HTTP/1.1 server on 127.0.0.1 for transport tests: records what it gets, answers by path.

Paths: ``/json`` a small JSON answer; ``/big?size=N`` N bytes; ``/error`` a 503 with a JSON
error and Retry-After; ``/slow`` (or what ``held`` says) answers once ``release`` is set (or
after 10 s); ``/hangup`` closes the connection without answering. ``answer`` may answer any
other request itself: the body, sent as JSON (a service's answers to its callers are).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from harness.launch import HOST


@dataclasses.dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_port: int  # one per connection: the same port means the connection was reused


def _slow_path(request: Recorded) -> bool:
    return request.path == "/slow"


class RecordingServer:
    def __init__(
        self,
        held: Callable[[Recorded], bool] = _slow_path,
        answer: Callable[[Recorded], bytes] | None = None,
    ) -> None:
        self.received: list[Recorded] = []
        self._held = held
        self._answer_with = answer
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as waitress

            def handle_one_request(self) -> None:
                # Every method goes to one place (http.server looks up do_<METHOD>).
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                server._answer(self)
                self.wfile.flush()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.address = f"{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        body = _read_body(handler, headers)
        request = Recorded(
            handler.command, url.path, parse_qs(url.query), headers, body, handler.client_address[1]
        )
        self.received.append(request)
        if url.path == "/hangup":
            handler.close_connection = True
            return
        status, extra = 200, {}
        if url.path == "/big":
            data = b"x" * int(parse_qs(url.query)["size"][0])
        elif url.path == "/error":
            status, extra = 503, {"Retry-After": "2"}
            data = json.dumps({"title": "Busy", "description": "try later"}).encode()
        elif self._answer_with is not None:
            data = self._answer_with(request)
        else:
            if self._held(request):
                self.release.wait(10)
            data = json.dumps({"ok": True}).encode()
        handler.send_response(status)
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)


def _read_body(handler: http.server.BaseHTTPRequestHandler, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(handler.rfile.readline().split(b";")[0], 16):
            body += handler.rfile.read(size)
            handler.rfile.readline()
        handler.rfile.readline()  # the empty line after the last chunk
        return body
    return handler.rfile.read(int(headers.get("content-length", "0")))
