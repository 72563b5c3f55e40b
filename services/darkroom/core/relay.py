"""Passing another service's answer on to our client with its real status."""

from __future__ import annotations

import falcon

from darkroom.core.errors import raise_for_upstream
from darkroom.core.imagefiles import FileAnswer, ImageAnswer
from darkroom.core.streams import ClosingBody
from darkroom.core.transport import STREAM_CHUNK_BYTES, Response


def relay(upstream: Response, resp: falcon.Response, service: str) -> None:
    """Copy a small upstream answer (status, type, body); errors keep their status."""
    with upstream:
        raise_for_upstream(upstream, service)
        resp.status = falcon.code_to_http_status(upstream.status_code)
        if upstream.status_code == 204:
            return
        resp.content_type = upstream.headers.get("Content-Type", falcon.MEDIA_TEXT)
        resp.data = upstream.content


def relay_stream(
    upstream: ImageAnswer, resp: falcon.Response, chunk_bytes: int = STREAM_CHUNK_BYTES
) -> None:
    """Stream a large upstream body through without holding it; the upstream is closed when
    the server closes the body (at its end, or when our client went away, even before the
    first chunk). A file on this role's volume is handed to the server as a file: waitress
    sends it from its own loop (``wsgi.file_wrapper``), no server thread held meanwhile."""
    resp.content_type = upstream.headers.get("Content-Type", "application/octet-stream")
    length = upstream.headers.get("Content-Length")
    if isinstance(upstream, FileAnswer):
        resp.set_stream(upstream.detach(), int(length) if length is not None else None)
        return
    if length is not None:
        resp.content_length = int(length)
    resp.stream = ClosingBody(upstream.stream(chunk_bytes), upstream.close)
