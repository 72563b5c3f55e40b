"""Structured logs: one JSON object per line, with the request id and every ``extra`` field.

``configure(level)`` installs the formatter on the root logger; ``fmt="text"`` writes the same
fields as one readable line instead (``12:00:01 master INFO serving address=127.0.0.1:3003``),
for a person at a terminal. Each line carries ``time``,
``level``, ``logger``, ``message``, ``request_id`` (the request being handled, or the task a
worker is processing; absent outside both), the ``extra={...}`` fields given at the call, and
``exception`` with the traceback when there is one. Fields whose name says they hold a secret
(``authorization``, ``token``, ``lease``, ``password``, ``secret``, ``api_key``, ...) are
written as ``"[redacted]"``, also inside dicts, so a header dict can be logged safely.

``AccessLog`` is the middleware that writes one ``request`` line per answered request.
"""

from __future__ import annotations

import functools
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
# An idle worker's claim ends with 204 every claim wait, an idle webhook loop's claim every
# second (four loops a master): DEBUG too.
QUIET_ANSWERS = frozenset({("/getNewTask", 204), ("/claimDelivery", 204)})
# A resource lists here the methods whose lines are DEBUG (e.g. the registry's look-ups, made
# on every address resolution), as ``auth`` says who may call it.
QUIET_METHODS_ATTRIBUTE = "quiet_methods"


def redact(name: str, value: Any) -> Any:
    """``value``, or REDACTED when ``name`` says it is a secret; dicts are redacted per key."""
    if type(value) in _SCALARS:  # most fields: no ABC check needed
        return REDACTED if _is_secret(name) else value
    if _is_secret(name):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(key): redact(str(key), item) for key, item in value.items()}
    return value


# Field names come from the code's own ``extra`` keys (and the keys of dicts logged): a few
# dozen, each judged once rather than searched for on every line.
@functools.lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """A JSON-friendly form of ``value`` (json.dumps falls back to this)."""
    if isinstance(value, bytes):
        return value[:200].decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


# One encoder for every line: json.dumps with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(default=_plain, ensure_ascii=False)


class _UtcSeconds:
    """``2026-12-01T15:32:50`` for a timestamp, made once per second rather than per line."""

    def __init__(self) -> None:
        self._latest = (-1, "")  # one tuple, so that threads never see one half updated

    def __call__(self, second: int) -> str:
        cached_second, text = self._latest
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._latest = (second, text)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})
        self._utc_seconds = _UtcSeconds()

    def format(self, record: logging.LogRecord) -> str:
        return _ENCODER.encode(self.document(record))

    def document(self, record: logging.LogRecord) -> dict[str, Any]:
        """Every field of the line, in order: time, level, logger, message, then the rest."""
        second = int(record.created)
        millis = int((record.created - second) * 1000)
        document: dict[str, Any] = {
            "time": f"{self._utc_seconds(second)}.{millis:03d}+00:00",
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
        return document


class TextFormatter(JsonFormatter):
    """``12:00:01 master INFO serving address=127.0.0.1:3003``: local time, role, level,
    message, then the other fields as ``name=value``; a traceback on the lines below."""

    _SHOWN_FIRST = ("time", "level", "logger", "message", "role", "exception", "stack")

    def format(self, record: logging.LogRecord) -> str:
        document = self.document(record)
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        source = document.get("role") or record.name
        fields = " ".join(
            f"{name}={_text(value)}"
            for name, value in document.items()
            if name not in self._SHOWN_FIRST
        )
        line = f"{clock} {source} {record.levelname} {document['message']} {fields}".rstrip()
        trace = document.get("exception") or document.get("stack")
        return f"{line}\n{trace}" if trace else line


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=_plain)
    return json.dumps(text) if not text or " " in text else text


def resolve_format(log_format: str, stream: TextIO | None = None) -> str:
    """ "text" or "json": "auto" is text when ``stream`` (stderr) is a terminal, else JSON."""
    if log_format != "auto":
        return log_format
    return "text" if (stream or sys.stderr).isatty() else "json"


def configure(level: str, stream: TextIO | None = None, fmt: str = "json", **static: Any) -> None:
    """Log lines on ``stream`` (stderr) for every logger, at ``level`` (e.g. ``INFO``).

    ``fmt`` is "json" or "text"; ``static`` fields (e.g. ``role="database"``) are on every line.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = TextFormatter if fmt == "text" else JsonFormatter
    handler.setFormatter(formatter(static))
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
        level = logging.DEBUG if _is_quiet(req, resp, resource, route) else logging.INFO
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


def _is_quiet(req: falcon.Request, resp: falcon.Response, resource: object, route: str) -> bool:
    return (
        route in QUIET_ROUTES
        or (route, resp.status_code) in QUIET_ANSWERS
        or req.method in getattr(resource, QUIET_METHODS_ATTRIBUTE, ())
    )
