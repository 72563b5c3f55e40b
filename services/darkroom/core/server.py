"""Serving a role's app with waitress, and stopping it cleanly on SIGTERM."""

from __future__ import annotations

import logging
import math
import signal
import sys
from collections.abc import Callable
from types import FrameType

import falcon
import waitress

from darkroom.core.config import Config

log = logging.getLogger(__name__)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # waitress closes its sockets on SystemExit and returns from run()
    sys.exit(0)


def serve(
    app: falcon.App,
    config: Config,
    role: str,
    max_body_bytes: int | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM; ``on_listening`` runs once the socket accepts connections.

    Roles register their address there: registered before listening, a caller that found the
    address could be refused (seen as a 503 right after start).
    """
    port = config.port_for(role)
    max_body_bytes = max_body_bytes or config.max_upload_bytes
    server = waitress.create_server(
        app,
        host=config.host,
        port=port,
        threads=config.threads,
        # waitress answers 413 itself for bodies over the upload limit (with slack for headers)
        max_request_body_size=max_body_bytes + 64 * 1024,
        max_request_header_size=64 * 1024,
        # idle connections (slow or stalled clients) are closed after twice the HTTP timeout;
        # waitress takes whole seconds and looks for them every cleanup_interval (30 s by default,
        # so a 2 s timeout cut clients after up to 32 s)
        channel_timeout=max(1, math.ceil(config.http_timeout_seconds * 2)),
        cleanup_interval=1,
        connection_limit=1000,
        # 8 KiB by default: a 3 MB body took 400 trips through the event loop (3x the CPU)
        recv_bytes=256 * 1024,
        ident="darkroom",
        clear_untrusted_proxy_headers=True,
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if on_listening is not None:
        on_listening()
    log.info("serving", extra={"role": role, "address": f"{config.host}:{port}"})
    try:
        server.run()
    finally:
        server.close()
