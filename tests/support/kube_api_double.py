"""A small Kubernetes API server double for ConfigMaps, over real HTTP on 127.0.0.1.

It follows the parts of the real protocol that a list/watch client depends on, so the real
``kubernetes`` client can be pointed at it with ``Configuration(host=double.url)``:

- one resourceVersion counter for every change (like etcd's revision); lists carry it in
  ``metadata.resourceVersion``; a change that changes nothing does not bump it;
- ``?watch=1&resourceVersion=RV&timeoutSeconds=N`` streams newline-delimited JSON events
  (chunked) for every change after RV and ends the stream normally after N seconds;
- a bounded event history: a watch from a version older than the history answers with an
  ``ERROR`` event carrying a 410 ``Status`` (or, with ``gone_as_http_status``, an HTTP 410),
  and an open stream that fell behind a compaction gets the same ``ERROR`` event;
- GET/POST/PATCH/DELETE of one ConfigMap; PATCH takes merge and strategic-merge patches and
  answers 409 Conflict when the patch carries a stale ``metadata.resourceVersion``;
- the API server's 1 MiB limit on a ConfigMap's data (422 Invalid).

Tests change its state "out of band" (as ``kubectl`` would) with ``put``, ``patch_data`` and
``delete``, and inspect ``requests``. ``stop()`` drops every open connection, as a crashed API
server would; ``start()`` serves again on the same port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_DATA_BYTES = 1024 * 1024
_PATH = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/configmaps(?:/(?P<name>[^/]+))?")
_MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")

JsonObject = dict[str, Any]


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    time: float
    status: int = 0
    generation: int = 0  # of the watch streams, when this request arrived

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")

    @property
    def is_list(self) -> bool:
        match = _PATH.fullmatch(self.path)
        return self.method == "GET" and match is not None and match["name"] is None


@dataclasses.dataclass(frozen=True)
class _Event:
    version: int
    kind: str
    obj: JsonObject


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status_object(code, reason, message)


def status_object(code: int, reason: str, message: str) -> JsonObject:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def data_size(data: dict[str, str]) -> int:
    """What the API server counts against the limit: the bytes of every key and value."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeApiDouble:
    def __init__(
        self,
        *,
        history_limit: int = 100,
        gone_as_http_status: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.history_limit = history_limit
        self.tls = tls  # a server-side context: serve https, as a real API server does
        # A too-old watch is refused at the start with HTTP 410 instead of an ERROR event.
        self.gone_as_http_status = gone_as_http_status
        self.unavailable = False  # every request answers 503, as a server without etcd
        self.forbid_create = False  # POST answers 403, as without RBAC for create
        self.forced_conflicts = 0  # the next N patches answer 409 whatever they carry
        # Open watch streams go silent: no events, no end at timeoutSeconds (a dead peer).
        self.silent_watches = False
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str], JsonObject] = {}
        self._version = 0
        self._history: deque[_Event] = deque()
        self._compacted = 0  # events up to this version are forgotten
        self._paused = False
        self._generation = 0  # bumped to end the open watch streams
        self._running = False
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # --- life cycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self._port = server.server_address[1]
        self._server = server
        with self._cond:
            self._running = True
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop every open connection, mid-stream, as a crash would."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> KubeApiDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- out-of-band changes, as kubectl would make them ----------------------------------

    def put(self, namespace: str, name: str, data: dict[str, str], **metadata: Any) -> JsonObject:
        """Create or replace a ConfigMap."""
        with self._cond:
            old = self._objects.get((namespace, name))
            obj = self._new_object(namespace, name, data, metadata)
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
            return self._commit(namespace, name, obj, "ADDED" if old is None else "MODIFIED")

    def patch_data(self, namespace: str, name: str, changes: dict[str, str | None]) -> JsonObject:
        with self._cond:
            obj = self._get(namespace, name)
            patched = merge_patch(obj, {"data": changes})
            return self._commit(namespace, name, patched, "MODIFIED")

    def delete(self, namespace: str, name: str) -> None:
        with self._cond:
            self._get(namespace, name)
            self._commit(namespace, name, None, "DELETED")

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        with self._cond:
            obj = self._objects.get((namespace, name))
            return None if obj is None else dict(obj.get("data") or {})

    def object(self, namespace: str, name: str) -> JsonObject | None:
        with self._cond:
            obj = self._objects.get((namespace, name))
            return None if obj is None else json.loads(json.dumps(obj))

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410."""
        with self._cond:
            self._history.clear()
            self._compacted = self._version
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused_watches(self) -> Iterator[None]:
        """Hold events back from open streams (a slow network) until the block ends."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch stream normally, as the server does at ``timeoutSeconds``."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    # --- inspection ----------------------------------------------------------------------

    def lists(self) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.is_list and not r.is_watch]

    def watches(self) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.is_list and r.is_watch]

    def calls(self, method: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.method == method]

    # --- state, under self._cond ---------------------------------------------------------

    def _new_object(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> JsonObject:
        meta = {
            **metadata,
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}

    def _get(self, namespace: str, name: str) -> JsonObject:
        obj = self._objects.get((namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'configmaps "{name}" not found')
        return obj

    def _commit(self, namespace: str, name: str, obj: JsonObject | None, kind: str) -> JsonObject:
        """Store ``obj`` (None deletes) under a new version and record the event."""
        old = self._objects.get((namespace, name))
        if obj is not None and old is not None and _same(obj, old):
            return old  # a no-op does not bump the version, as on a real server
        if obj is not None and data_size(obj.get("data") or {}) > MAX_DATA_BYTES:
            raise ApiError(
                422,
                "Invalid",
                f"ConfigMap {name!r} is invalid: []: Too long: must have at most "
                f"{MAX_DATA_BYTES} bytes",
            )
        self._version += 1
        if obj is None:
            assert old is not None
            event_obj = merge_patch(old, {"metadata": {"resourceVersion": str(self._version)}})
            del self._objects[(namespace, name)]
        else:
            obj["metadata"]["resourceVersion"] = str(self._version)
            self._objects[(namespace, name)] = obj
            event_obj = obj
        self._history.append(_Event(self._version, kind, json.loads(json.dumps(event_obj))))
        while len(self._history) > self.history_limit:
            self._compacted = self._history.popleft().version
        self._cond.notify_all()
        return event_obj

    # --- HTTP ----------------------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = RecordedRequest(
            method=method,
            path=url.path,
            query=query,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=json.loads(raw) if raw else None,
            time=time.monotonic(),
        )
        with self._cond:  # so end_watches() after a test sees this request also ends it
            record.generation = self._generation
            self.requests.append(record)
        match = _PATH.fullmatch(url.path)
        try:
            if self.unavailable:
                raise ApiError(503, "ServiceUnavailable", "etcdserver: request timed out")
            if match is None:
                raise ApiError(404, "NotFound", f"no route for {url.path}")
            if record.is_watch and method == "GET" and match["name"] is None:
                self._watch(handler, record, match["ns"])
                return
            status, body = self._respond(record, match["ns"], match["name"])
        except ApiError as exc:
            status, body = exc.status["code"], exc.status
        record.status = status
        handler.send_json(status, body)

    def _respond(
        self, record: RecordedRequest, namespace: str, name: str | None
    ) -> tuple[int, JsonObject]:
        with self._cond:
            if name is None and record.method == "GET":
                return 200, self._list(namespace, record.query.get("fieldSelector"))
            if name is None and record.method == "POST":
                return 201, self._create(namespace, record.body)
            if name is not None and record.method == "GET":
                return 200, self._get(namespace, name)
            if name is not None and record.method == "PATCH":
                return 200, self._patch(namespace, name, record)
            if name is not None and record.method == "DELETE":
                self._get(namespace, name)
                self._commit(namespace, name, None, "DELETED")
                return 200, {**status_object(200, "", ""), "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{record.method} is not supported here")

    def _list(self, namespace: str, selector: str | None) -> JsonObject:
        items = [
            obj
            for (ns, name), obj in sorted(self._objects.items())
            if ns == namespace and _selects(selector, name)
        ]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMapList",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _create(self, namespace: str, body: JsonObject) -> JsonObject:
        if self.forbid_create:
            raise ApiError(403, "Forbidden", 'configmaps is forbidden: cannot create "configmaps"')
        name = body["metadata"]["name"]
        if (namespace, name) in self._objects:
            raise ApiError(409, "AlreadyExists", f'configmaps "{name}" already exists')
        meta = {k: v for k, v in body["metadata"].items() if k in ("labels", "annotations")}
        obj = self._new_object(namespace, name, body.get("data") or {}, meta)
        return self._commit(namespace, name, obj, "ADDED")

    def _patch(self, namespace: str, name: str, record: RecordedRequest) -> JsonObject:
        content_type = record.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in _MERGE_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"{content_type} is not supported")
        obj = self._get(namespace, name)
        wanted = (record.body.get("metadata") or {}).get("resourceVersion")
        if self.forced_conflicts > 0 or (
            wanted is not None and wanted != obj["metadata"]["resourceVersion"]
        ):
            self.forced_conflicts = max(0, self.forced_conflicts - 1)
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on configmaps "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        patched = merge_patch(obj, record.body)
        patched["metadata"] = {**patched["metadata"], **_identity(obj)}
        return self._commit(namespace, name, patched, "MODIFIED")

    def _watch(self, handler: _Handler, record: RecordedRequest, namespace: str) -> None:
        query = record.query
        since = query.get("resourceVersion")
        timeout = float(query.get("timeoutSeconds") or 1800)
        selector = query.get("fieldSelector")
        with self._cond:
            cursor = int(since) if since not in (None, "", "0") else self._version
            too_old = cursor < self._compacted
        if too_old and self.gone_as_http_status:
            record.status = 410
            handler.send_json(410, _gone(cursor))
            return
        record.status = 200
        handler.start_stream()
        deadline = time.monotonic() + timeout
        for kind, obj in self._events(namespace, selector, cursor, deadline, record.generation):
            if kind == "DROP":
                handler.drop()
                return
            handler.send_chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        handler.end_stream()

    def _events(
        self, namespace: str, selector: str | None, cursor: int, deadline: float, generation: int
    ) -> Iterator[tuple[str, JsonObject]]:
        """Events after ``cursor`` until the deadline; ("DROP", {}) when the server goes down."""
        while True:
            with self._cond:
                batch, cursor, outcome = self._next_batch(cursor, deadline, generation)
            for event in batch:
                if event.obj["metadata"]["namespace"] == namespace and _selects(
                    selector, event.obj["metadata"]["name"]
                ):
                    yield event.kind, event.obj
            if outcome == "gone":
                yield "ERROR", _gone(cursor)
                return
            if outcome in ("end", "drop"):
                if outcome == "drop":
                    yield "DROP", {}
                return

    def _next_batch(
        self, cursor: int, deadline: float, generation: int
    ) -> tuple[list[_Event], int, str]:
        while True:
            if not self._running:
                return [], cursor, "drop"
            if self._generation != generation:
                return [], cursor, "end"
            if self.silent_watches:
                self._cond.wait(0.05)
                continue
            if not self._paused:
                if cursor < self._compacted:
                    return [], cursor, "gone"
                batch = [e for e in self._history if e.version > cursor]
                if batch:
                    return batch, batch[-1].version, "more"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], cursor, "end"
            self._cond.wait(remaining)


def _gone(cursor: int) -> JsonObject:
    return status_object(
        410, "Expired", f"too old resource version: {cursor} (the history has been compacted)"
    )


def _selects(selector: str | None, name: str) -> bool:
    if not selector:
        return True
    field, _, value = selector.partition("=")
    if field != "metadata.name":
        raise ApiError(400, "BadRequest", f"field label not supported: {field}")
    return value == name


def _identity(obj: JsonObject) -> JsonObject:
    return {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "creationTimestamp")}


def _same(a: JsonObject, b: JsonObject) -> bool:
    strip = {"resourceVersion": None}
    return merge_patch(a, {"metadata": strip}) == merge_patch(b, {"metadata": strip})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def double(self) -> KubeApiDouble:
        return self.server.double  # type: ignore[attr-defined,no-any-return]

    def handle(self) -> None:
        # A client that hangs up, or stop() dropping the connection, is normal here.
        with contextlib.suppress(ConnectionError, OSError):
            super().handle()

    def setup(self) -> None:
        super().setup()
        with self.double._cond:
            self.double._connections.add(self.connection)

    def finish(self) -> None:
        with self.double._cond:
            self.double._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.double._handle(self, "GET")

    def do_POST(self) -> None:
        self.double._handle(self, "POST")

    def do_PATCH(self) -> None:
        self.double._handle(self, "PATCH")

    def do_DELETE(self) -> None:
        self.double._handle(self, "DELETE")

    def send_json(self, status: int, body: JsonObject) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        """Close the connection without ending the chunked body: the client sees a broken read."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests inspect ``requests``; access logs would only be noise
