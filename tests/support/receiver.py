"""A webhook receiver on 127.0.0.1 for tests: records each request, answers scripted statuses."""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import threading
from pathlib import Path

from harness.launch import HOST, wait_until


@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Answers each request with the next of ``statuses`` (the last one once they run out)."""

    def __init__(
        self, statuses: tuple[int, ...] = (200,), tls: tuple[Path, Path] | None = None
    ) -> None:
        """``tls``: a certificate and its key to answer HTTPS with (the server names the
        client asked for, SNI, go to ``server_names``)."""
        self.statuses = list(statuses)
        self.server_names: list[str | None] = []
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server's name for it
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            "POST",
                            self.path,
                            {name.lower(): value for name, value in self.headers.items()},
                            body,
                        )
                    )
                    status = (
                        receiver.statuses.pop(0)
                        if len(receiver.statuses) > 1
                        else receiver.statuses[0]
                    )
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self._server.server_address[1]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Once ``count`` requests have come (Timeout otherwise): all of them."""
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} webhook requests")
        return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
