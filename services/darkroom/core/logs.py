"""Structured logs: one JSON object per line, with the request id and every ``extra`` field.

``configure(level)`` installs the formatter on the root logger. Each line carries ``time``,
``level``, ``logger``, ``message``, ``request_id`` (the request being handled, or the task a
worker is processing; absent outside both), the ``extra={...}`` fields given at the call, and
``exception`` with the traceback when there is one. Fields whose name says they hold a secret
(``authorization``, ``token``, ``lease``, ``password``, ``secret``, ``api_key``, ...) are
written as ``"[redacted]"``, also inside dicts, so a header dict can be logged safely.

``AccessLog`` is the middleware that writes one ``request`` line per answered request.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import falcon

from darkroom.core import requestid

# Attributes every LogRecord has: anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_SECRET_NAME = re.compile(
    r"authorization|token|lease|password|passwd|secret|api[_-]?key|cookie|credential", re.I
)
REDACTED = "[redacted]"
# Health probes and scrapes come every few seconds: their lines are DEBUG.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def redact(name: str, value: Any) -> Any:
    """``value``, or REDACTED when ``name`` says it is a secret; dicts are redacted per key."""
    if _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(key): redact(str(key), item) for key, item in value.items()}
    return value


def _plain(value: Any) -> Any:
    """A JSON-friendly form of ``value`` (json.dumps falls back to this)."""
    if isinstance(value, bytes):
        return value[:200].decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
        }
        if request_id := requestid.current.get():
            document["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in document:
                document[name] = redact(name, value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        return json.dumps(document, default=_plain, ensure_ascii=False)


def configure(level: str, stream: TextIO | None = None, **static: Any) -> None:
    """JSON lines on ``stream`` (stderr) for every logger, at ``level`` (e.g. ``INFO``).

    ``static`` fields (e.g. ``role="database"``) are added to every line.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Fields no line shows: skip gathering them (the logging docs' "Optimization" settings).
    logging._srcfile = None  # caller file, function and line: a stack walk per line
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


access_log = logging.getLogger("darkroom.access")


class AccessLog:
    """One ``request`` line per answered request: method, route, path, status, milliseconds.

    The query string is left out: it may carry lease tokens.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.access_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        started = getattr(req.context, "access_started", None)
        route = req.uri_template or "(unrouted)"
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        elapsed = time.perf_counter() - started if started is not None else 0.0
        access_log.log(
            level,
            "request",
            extra={
                "method": req.method,
                "route": route,
                "path": req.path,
                "status": resp.status_code,
                "ms": round(elapsed * 1000, 2),
            },
        )
