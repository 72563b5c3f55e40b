"""Passing another service's answer on to our client with its real status."""

from __future__ import annotations

import falcon
import requests

from darkroom.core.errors import raise_for_upstream


def relay(upstream: requests.Response, resp: falcon.Response, service: str) -> None:
    """Copy a small upstream answer (status, type, body); errors keep their status."""
    with upstream:
        raise_for_upstream(upstream, service)
        resp.status = falcon.code_to_http_status(upstream.status_code)
        if upstream.status_code == 204:
            return
        resp.content_type = upstream.headers.get("Content-Type", falcon.MEDIA_TEXT)
        resp.data = upstream.content


def relay_stream(
    upstream: requests.Response, resp: falcon.Response, chunk_bytes: int = 256 * 1024
) -> None:
    """Stream a large upstream body through without holding it; closes the upstream at the end."""
    resp.content_type = upstream.headers.get("Content-Type", "application/octet-stream")
    length = upstream.headers.get("Content-Length")
    if length is not None:
        resp.content_length = int(length)

    def chunks():
        with upstream:
            yield from upstream.iter_content(chunk_bytes)

    resp.stream = chunks()
