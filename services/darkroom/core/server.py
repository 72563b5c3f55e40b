"""Serving a role's app with waitress, and stopping it cleanly on SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any

import falcon
import waitress
from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask
from waitress.utilities import BadRequest, Error, RequestEntityTooLarge, RequestHeaderFieldsTooLarge

from darkroom.core.config import Config
from darkroom.core.headers import SECURITY_HEADERS

log = logging.getLogger(__name__)

# What a route takes unless serve() is told otherwise: task records, keys, never images. The
# body is buffered (to /tmp past 512 KiB) before the app, and its authentication, sees it.
SMALL_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
# waitress's default: output pending on one connection past which a response waits (see
# DarkroomChannel); below it, a response is handed over whole, spooled past 1 MiB to a file.
OUTPUT_WATERMARK_BYTES = 16 * 1024 * 1024
# File descriptors kept out of the connection limit: per thread an outgoing connection, a
# spooled body and a file it serves; and the process's own (logs, SQLite, the listener, pipes).
FDS_PER_THREAD = 3
FDS_RESERVED = 64
# A connection can hold three: its socket, the spooled body of the request in progress and
# that of the one read ahead (REQUEST_LOOKAHEAD).
FDS_PER_CONNECTION = 3
# Requests read from a connection while one is in progress. With none, waitress does not read
# the socket during a request, so a client that left is noticed only when a write to it fails
# (two writes later): an event stream's slot, or a long poll's thread, stayed taken that long.
# Reading ahead sees the end of the connection at once (streams.client_departed).
REQUEST_LOOKAHEAD = 1
# Past this, idle connections cost more memory than they are worth; the rest wait in the backlog.
MAX_CONNECTIONS = 10_000
# A read for a request line and headers, or a small body: a recv() buffer of 128 KiB or more is
# past glibc's mmap threshold, mapped and unmapped on every call (12 us against 3 us for a
# request of a few hundred bytes), so serve()'s recv_bytes is kept for the rest of large bodies.
SMALL_RECV_BYTES = 64 * 1024
# How far serve() raises its own soft descriptor limit towards the hard one.
WANTED_OPEN_FILES = 2 * MAX_CONNECTIONS + 1024


def _exit_on_sigterm(on_stopping: Callable[[], None] | None) -> Callable[[int, object], None]:
    """The SIGTERM handler: ``on_stopping`` (which only sets flags: it runs between two
    bytecodes of the main thread), then SystemExit, on which waitress closes its sockets and
    waits up to 5 s for its threads; long polls end within half a second of being told."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if on_stopping is not None:
            on_stopping()
        sys.exit(0)

    return handler


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never past the hard limit); the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", extra={"error": str(exc)})
    return MAX_CONNECTIONS * FDS_PER_CONNECTION if soft == resource.RLIM_INFINITY else soft


def connection_limit(open_files: int, threads: int) -> int:
    """How many connections fit in ``open_files`` descriptors beside what the threads need."""
    spare = open_files - FDS_RESERVED - threads * FDS_PER_THREAD
    return max(16, min(MAX_CONNECTIONS, spare // FDS_PER_CONNECTION))


class BodyTooLarge(RequestEntityTooLarge):
    def __init__(self, limit: int) -> None:
        super().__init__(f"exceeds {limit} bytes")
        self.limit = limit


def _describe(error: Error, adj: Adjustments) -> tuple[str, str]:
    """Title and description of one of waitress's own refusals, in the app's words."""
    if isinstance(error, RequestEntityTooLarge):
        # waitress itself refuses a body of max_request_body_size
        limit = getattr(error, "limit", adj.max_request_body_size - 1)
        return "Request body too large", f"This route takes bodies of at most {limit} bytes."
    if isinstance(error, RequestHeaderFieldsTooLarge):
        return (
            "Request headers too large",
            f"The request line and headers must be under {adj.max_request_header_size} bytes.",
        )
    if isinstance(error, BadRequest):
        return "Malformed request", f"Not a valid HTTP/1.1 request: {error.body}."
    return error.reason, str(error.body)


class JsonErrorTask(ErrorTask):
    """waitress's own answers (bad framing, oversized headers or body) as JSON, like the app's.

    waitress writes them as text/plain, quoting its internal limits.
    """

    def execute(self) -> None:
        error = self.request.error
        title, description = _describe(error, self.channel.server.adj)
        body = json.dumps({"title": title, "description": description}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", falcon.MEDIA_JSON), *SECURITY_HEADERS])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class RouteBodyLimits(HTTPRequestParser):
    """waitress's request parser, with a body limit per path: ``upload_limits`` or the small one.

    waitress has one limit per server and buffers the body before the app (and so its
    authentication) sees it; the routes that take no images must not buffer 50 MiB.
    """

    upload_limits: Mapping[str, int] = {}

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.began = time.monotonic()  # made when the request's first byte arrives

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if not self.headers_finished or not (
            self.error is None or isinstance(self.error, RequestEntityTooLarge)
        ):
            return consumed
        limit = self.upload_limits.get(self.path.rstrip("/") or "/", SMALL_BODY_BYTES)
        # a Content-Length is judged at once, a chunked body as it arrives; waitress's own
        # refusal (over the largest limit) is told with this path's limit
        if self.error is not None or max(self.content_length, self.body_bytes_received) > limit:
            self.error = BodyTooLarge(limit)
            self.completed = True
        return consumed


class DarkroomChannel(HTTPChannel):
    """waitress's connection, with JSON refusals and no thread held by a client that won't read.

    A response thread hands its bytes to the channel; past ``outbuf_high_watermark`` (16 MiB)
    pending on one connection, waitress makes it wait, without a time limit, for the client to
    take some, and its idle cut-off skips connections with a request in progress: clients that
    never read a 20 MB result held every thread (the master's /healthz timed out for 75 s).
    Here the thread goes on handing bytes over (waitress spools them to a temporary file) while
    what all connections hold past the watermark stays under ``spool_budget``; over it, the
    thread waits, and the connection is closed once its client has taken nothing for
    ``channel_timeout``.
    """

    error_task_class = JsonErrorTask
    spool_budget = 0
    header_seconds = math.inf

    def readable(self) -> bool:
        # Called by the event loop at least once a second. A request line and headers that
        # take longer than header_seconds are cut: waitress's idle cut-off never fires on a
        # client sending a byte every 20 s, and 1,000 such connections held the role's port.
        request = self.request
        if (
            request is not None
            and not request.headers_finished
            and time.monotonic() - request.began > self.header_seconds
        ):
            self.will_close = True  # writable() now; the event loop closes the socket
            return False
        return super().readable()

    def recv(self, buffer_size: int) -> bytes:
        # waitress reads recv_bytes (256 KiB) every time; that size only pays for itself while
        # a large body is arriving
        if not _large_body_arriving(self.request):
            buffer_size = min(buffer_size, SMALL_RECV_BYTES)
        return super().recv(buffer_size)

    def _flush_outbufs_below_high_watermark(self) -> None:
        # waitress 3.0.2's method of this name, with the budget and the wait bounded
        if not self._must_wait():
            return
        waiting_since = time.time()
        with self.outbuf_lock:
            self._flush_exception(self._flush_some, do_close=False)
            while self.connected and self._must_wait():
                if time.time() - max(self.last_activity, waiting_since) > self.adj.channel_timeout:
                    self.will_close = True  # the event loop closes the socket
                    self.server.pull_trigger()
                    raise ClientDisconnected
                self.server.pull_trigger()
                self.outbuf_lock.wait(timeout=1)

    def _must_wait(self) -> bool:
        watermark = self.adj.outbuf_high_watermark
        if self.total_outbufs_len <= watermark:
            return False
        channels = list(self.server.active_channels.values())
        held = sum(max(0, channel.total_outbufs_len - watermark) for channel in channels)
        return held >= self.spool_budget


def _large_body_arriving(request: HTTPRequestParser | None) -> bool:
    """Whether ``request`` is past its headers with more than SMALL_RECV_BYTES of body to come
    (or a chunked body, of unknown length)."""
    if request is None or not request.headers_finished or request.completed:
        return False
    to_come = request.content_length - request.body_bytes_received
    return request.chunked or to_come > SMALL_RECV_BYTES


def channel_class(
    upload_limits: Mapping[str, int], spool_budget: int, header_seconds: float = math.inf
) -> type[HTTPChannel]:
    """Connections whose bodies may reach ``upload_limits[path]``, elsewhere SMALL_BODY_BYTES,
    whose responses may hold ``spool_budget`` bytes in all past the output watermark, and whose
    request line and headers must arrive within ``header_seconds``."""
    parser = type("Parser", (RouteBodyLimits,), {"upload_limits": dict(upload_limits)})
    return type(
        "Channel",
        (DarkroomChannel,),
        {"parser_class": parser, "spool_budget": spool_budget, "header_seconds": header_seconds},
    )


# ---------------------------------------------------------------------------------------------
# The health listener: /healthz and /readyz on a port of their own, with their own event loop
# and threads, so that probes answer while the role's port is flooded (Kubernetes would
# otherwise restart pods under attack). Only the kubelet reaches it: no Service or
# NetworkPolicy names the port.

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
HEALTH_THREADS = 2
# Probes open a connection each, every few seconds; more than this is not a kubelet.
HEALTH_CONNECTIONS = 64
HEALTH_IDLE_SECONDS = 5


def health_only(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that passes /healthz and /readyz to ``app`` and answers 404 to the rest."""

    def serve_health(environ: dict[str, Any], start_response: Callable[..., Any]):
        if environ.get("PATH_INFO", "").rstrip("/") in HEALTH_PATHS:
            return app(environ, start_response)
        body = json.dumps(
            {"title": "Not found", "description": "This port serves /healthz and /readyz only."}
        ).encode()
        headers = [("Content-Type", falcon.MEDIA_JSON), ("Content-Length", str(len(body)))]
        start_response("404 Not Found", [*headers, *SECURITY_HEADERS])
        return [body]

    return serve_health


def start_health_listener(app: falcon.App, host: str, port: int) -> threading.Thread:
    """Serve ``app``'s probes on ``host:port`` from a thread, with an event loop of its own."""
    server = waitress.create_server(
        health_only(app),
        map={},  # its own socket map: its own event loop, not the role's
        host=host,
        port=port,
        threads=HEALTH_THREADS,
        connection_limit=HEALTH_CONNECTIONS,
        channel_timeout=HEALTH_IDLE_SECONDS,
        cleanup_interval=1,
        asyncore_use_poll=True,
        max_request_body_size=MAX_HEADER_BYTES,
        max_request_header_size=MAX_HEADER_BYTES,
        ident="darkroom",
    )
    server.channel_class = channel_class({}, spool_budget=0, header_seconds=HEALTH_IDLE_SECONDS)
    thread = threading.Thread(target=server.run, name="health-listener", daemon=True)
    thread.start()
    return thread


def serve(
    app: falcon.App,
    config: Config,
    role: str,
    upload_limits: Mapping[str, int] | None = None,
    on_listening: Callable[[], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM; ``on_listening`` runs once the socket accepts connections,
    ``on_stopping`` at SIGTERM (see ``_exit_on_sigterm``).

    ``upload_limits`` maps the paths that take large bodies (images) to their limit; every other
    path takes SMALL_BODY_BYTES. A larger body is refused with 413 (from ``Content-Length``
    alone) before it is buffered.

    Roles register their address there: registered before listening, a caller that found the
    address could be refused (seen as a 503 right after start).
    """
    upload_limits = upload_limits or {}
    port = config.port_for(role)
    open_files = raise_open_file_limit()
    server = waitress.create_server(
        app,
        host=config.host,
        port=port,
        threads=config.threads,
        # waitress's own limit, for all paths; RouteBodyLimits refuses less on most
        max_request_body_size=max([SMALL_BODY_BYTES, *upload_limits.values()]) + 1,
        max_request_header_size=MAX_HEADER_BYTES,
        # idle connections (slow or stalled clients) are closed after twice the HTTP timeout;
        # waitress takes whole seconds and looks for them every cleanup_interval (30 s by default,
        # so a 2 s timeout cut clients after up to 32 s)
        channel_timeout=max(1, math.ceil(config.http_timeout_seconds * 2)),
        cleanup_interval=1,
        # select() fails on descriptors >= 1024 ("filedescriptor out of range"): about 1,000 idle
        # connections made the role exit; poll() has no such ceiling
        asyncore_use_poll=True,
        connection_limit=connection_limit(open_files, config.threads),
        outbuf_high_watermark=OUTPUT_WATERMARK_BYTES,
        channel_request_lookahead=REQUEST_LOOKAHEAD,
        # 8 KiB by default: a 3 MB body took 400 trips through the event loop (3x the CPU)
        recv_bytes=256 * 1024,
        ident="darkroom",
        clear_untrusted_proxy_headers=True,
    )
    # create_server builds one TCP server; this is the class of the connections it accepts
    # one largest result may be spooled past the watermark, however slowly its client reads
    server.channel_class = channel_class(
        upload_limits,
        spool_budget=config.max_result_bytes,
        header_seconds=config.request_header_seconds,
    )
    if config.health_port:
        start_health_listener(app, config.host, config.health_port)
    signal.signal(signal.SIGTERM, _exit_on_sigterm(on_stopping))
    if on_listening is not None:
        on_listening()
    fields = {"role": role, "address": f"{config.host}:{port}"}
    if config.health_port:
        fields["health_address"] = f"{config.host}:{config.health_port}"
    log.info("serving", extra=fields)
    try:
        server.run()
    finally:
        server.close()
