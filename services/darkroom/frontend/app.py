"""The frontend's routes: the seed's form routes, the page, and a JSON status for it."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, BinaryIO

import falcon

from darkroom.contract.pipeline import MAX_PIPELINE_CHARS
from darkroom.contract.tasks import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED_HEADER,
    TaskState,
    waited_through,
)
from darkroom.core.app import create_base_app
from darkroom.core.auth import BASIC_CHALLENGE, CLIENT, PUBLIC
from darkroom.core.config import Config
from darkroom.core.errors import raise_for_upstream
from darkroom.core.ids import require_task_id
from darkroom.core.longpoll import LongPolls
from darkroom.core.params import single_param, state_param, wait_param
from darkroom.core.relay import relay, relay_stream
from darkroom.core.streams import CHUNK_BYTES, StreamSlots, client_departed, iter_chunks
from darkroom.core.transport import Response
from darkroom.master.client import MasterClient

STATIC = resources.files("darkroom.frontend") / "static"
STATIC_TYPES = {
    ".html": falcon.MEDIA_HTML,
    ".js": falcon.MEDIA_JS,
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page loads only its own files: no inline script or style, no other origin.
# blob: shows the chosen file before it is uploaded.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# A relayed long poll asks the master in slices this long: between two, a client that left
# is seen (waitress reads ahead) and its thread freed, as soon as an idle event stream's is
# (EventStreamPolicy's keep-alive); a slice costs the master one poll, answered from memory.
POLL_SLICE_SECONDS = 2.0
UPLOAD_FIELD = "uploadfile"
OP_FIELD = "op"
# The master checks the pipeline; this only bounds what is read here (UTF-8: 4 bytes a character).
MAX_OP_BYTES = 4 * MAX_PIPELINE_CHARS
# What a form adds around the image (boundaries, part headers, the op field).
FORM_OVERHEAD_BYTES = 64 * 1024


def _upload_headers(req: falcon.Request, image: Iterator[bytes] | BinaryIO) -> dict[str, str]:
    """The upload's Idempotency-Key, passed on as it is (the master checks it), and the
    image's length when it is a file (chunked framing costs both ends CPU)."""
    headers = {}
    if (key := req.get_header(IDEMPOTENCY_KEY_HEADER)) is not None:
        headers[IDEMPOTENCY_KEY_HEADER] = key
    if hasattr(image, "fileno"):
        headers["Content-Length"] = str(os.fstat(image.fileno()).st_size - image.tell())
    return headers


def _invalid_op(description: str) -> falcon.HTTPBadRequest:
    # The master's title for a bad pipeline, so clients see one kind of error for both.
    return falcon.HTTPBadRequest(title="Invalid operation", description=description)


class Page:
    # Asking for the key here lets the browser prompt once and send it on every fetch.
    auth = CLIENT

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = (STATIC / "index.html").read_text()
        resp.set_header("Content-Security-Policy", PAGE_POLICY)


class StaticFile:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        file = STATIC / name
        if suffix not in STATIC_TYPES or "/" in name or not file.is_file():
            raise falcon.HTTPNotFound(title="Not found", description=f"No static file {name!r}.")
        resp.content_type = STATIC_TYPES[suffix]
        resp.text = file.read_text()
        resp.cache_control = ["no-cache"]


class Jobs:
    auth = CLIENT

    def __init__(
        self,
        master: MasterClient,
        max_wait: float,
        long_polls: LongPolls,
        stream_slots: StreamSlots,
    ) -> None:
        self._master = master.service
        self._max_wait = max_wait
        self._long_polls = long_polls
        self._stream_slots = stream_slots

    def on_post_submit(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The seed's form post: sends the ``uploadfile`` part to the master, answers the id.

        The pipeline is the ``op`` form field, before or after the file, or the ``op`` query
        parameter, not both; empty means the default. The master checks it and its refusal is
        passed on. The image is never held in memory: after an ``op`` field it streams straight
        through; before one (or with none) it is copied to a temporary file while the rest of
        the form is read, since the op must be known before the upload to the master starts.
        """
        if req.content_type is None or not req.content_type.startswith("multipart/form-data"):
            raise falcon.HTTPUnsupportedMediaType(
                title="Expected a form upload",
                description=f"POST multipart/form-data with the image in field {UPLOAD_FIELD!r}.",
            )
        query_op = single_param(req, OP_FIELD) or None
        with _read_form(req.get_media()) as (form_op, image):
            if form_op and query_op:
                raise _invalid_op(
                    f"Give {OP_FIELD!r} in the query string or as a form field, not both."
                )
            op = form_op or query_op
            params = {"op": op} if op else {}
            # A webhook URL in the query goes to the master as it is: the master checks it.
            if (webhook := single_param(req, "webhook")) is not None:
                params["webhook"] = webhook
            upstream = self._master.request(
                "POST", "/new", params=params, data=image, headers=_upload_headers(req, image)
            )
            if replayed := upstream.headers.get(REPLAYED_HEADER):
                resp.set_header(REPLAYED_HEADER, replayed)
            relay(upstream, resp, "master")

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = {"id": require_task_id(req)}
        relay(self._master.request("POST", "/cancel", params=params), resp, "master")

    def _poll(
        self, req: falcon.Request, path: str, still_waiting: Callable[[Response], bool]
    ) -> Response:
        """Ask the master, passing on a long poll's ``wait`` and ``state``.

        A long poll holds a thread here too, and the frontend may stand before several
        masters, each with its own bound: it bounds its own, as a master does, and passes
        the others on without ``wait`` (answered at once). It asks the master in slices of
        POLL_SLICE_SECONDS while ``still_waiting`` says the answer is the one the wait
        would end without, so a client that left frees its thread at the next slice."""
        params: dict[str, Any] = {"id": require_task_id(req)}
        asked = wait_param(req, self._max_wait)
        if asked and (state := state_param(req)) is not None:
            params["state"] = state.value
        departed = client_departed(req)
        with self._long_polls.wait(asked) as wait:
            deadline = time.monotonic() + wait
            while True:
                left = deadline - time.monotonic()
                sliced = min(left, POLL_SLICE_SECONDS)
                if sliced > 0:
                    params["wait"] = round(sliced, 3)
                asked_at = time.monotonic()
                upstream = self._master.request(
                    "GET", path, params=params, timeout=self._master.timeout + max(sliced, 0)
                )
                # An answer well before its slice while still waiting: the master had no
                # slot to wait in; passed on, as it would be without slicing.
                early = time.monotonic() - asked_at < sliced / 2
                over = sliced <= 0 or left <= sliced or early or departed()
                if over or not still_waiting(upstream):
                    return upstream
                upstream.close()

    def on_get_is_ready(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._poll(req, "/isReady", _not_ready) as upstream:
            raise_for_upstream(upstream, "master")
            ready = upstream.text.strip() == "1"
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Your image is ready." if ready else "Your image is not ready yet."

    def on_get_status(self, req: falcon.Request, resp: falcon.Response) -> None:
        through = waited_through(state_param(req))
        relay(self._poll(req, "/status", functools.partial(_in_states, through)), resp, "master")

    def on_get_events(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The master's event stream of the job (``/events``), passed on as each event comes.

        A relayed stream holds one of this role's threads too, and the frontend may stand in
        front of several masters: it bounds its own streams, as a master does.
        """
        task_id = require_task_id(req)
        headers = {}
        if (last := req.get_header("Last-Event-ID")) is not None:
            headers["Last-Event-ID"] = last
        self._stream_slots.take()
        try:
            upstream = self._master_events(task_id, headers)
        except BaseException:
            self._stream_slots.release()
            raise
        if upstream is None:
            self._stream_slots.release()
            resp.status = falcon.HTTP_204  # the job ended and nothing follows: EventSource stops
            return
        relay_stream(upstream, resp)
        resp.stream = self._stream_slots.body(resp.stream)  # closing it closes the upstream
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")

    def _master_events(self, task_id: str, headers: dict[str, str]) -> Response | None:
        """The master's open event stream; None when it answered 204; its error raised."""
        upstream = self._master.request(
            "GET", "/events", params={"id": task_id}, headers=headers, stream=True
        )
        if upstream.status_code >= 400 or upstream.status_code == 204:
            with upstream:
                raise_for_upstream(upstream, "master")
            return None
        return upstream

    def on_get_image(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        upstream = self._master.request("GET", "/get", params={"id": task_id}, stream=True)
        if upstream.status_code >= 400:
            with upstream:
                raise_for_upstream(upstream, "master")
        relay_stream(upstream, resp)
        if disposition := upstream.headers.get("Content-Disposition"):
            resp.set_header("Content-Disposition", disposition)


@contextlib.contextmanager
def _read_form(form: Any) -> Iterator[tuple[str | None, Iterator[bytes] | BinaryIO]]:
    """The op field's text (None when absent or empty) and the image, as chunks or a file.

    The whole form is read, to its closing boundary, before the image's last bytes are given:
    a form cut short is refused, never sent on truncated.
    """
    try:
        with _form_parts(form) as fields:
            yield fields
    except falcon.MediaMalformedError as exc:
        raise falcon.HTTPBadRequest(
            title="Malformed form",
            description=f"The form is cut short or malformed ({exc.description}); "
            "nothing was submitted.",
        ) from exc


@contextlib.contextmanager
def _form_parts(form: Any) -> Iterator[tuple[str | None, Iterator[bytes] | BinaryIO]]:
    op: str | None = None
    seen_op = False
    parts = iter(form)
    for part in parts:
        if part.name == OP_FIELD:
            op, seen_op = _op_field(part, seen_op), True
        elif part.name == UPLOAD_FIELD:
            if seen_op:
                yield op, _then_form_end(iter_chunks(part.stream), parts)
                return
            # The form skips what is left of a part when it moves on: keep this one on disk.
            with tempfile.TemporaryFile(prefix="darkroom-upload-") as image:
                shutil.copyfileobj(part.stream, image, CHUNK_BYTES)
                for later in parts:
                    if later.name == OP_FIELD:
                        op, seen_op = _op_field(later, seen_op), True
                image.seek(0)
                yield op, image
            return
    raise falcon.HTTPBadRequest(
        title="No image", description=f"The form has no file field {UPLOAD_FIELD!r}."
    )


def _then_form_end(chunks: Iterator[bytes], rest: Iterator[Any]) -> Iterator[bytes]:
    """``chunks``, the last held back until the rest of the form is read to its end."""
    held = next(chunks, None)
    for chunk in chunks:
        yield held
        held = chunk
    for later in rest:
        if later.name == OP_FIELD:
            _op_field(later, seen_before=True)
    if held is not None:
        yield held


def _op_field(part: Any, seen_before: bool) -> str | None:
    if seen_before:
        raise _invalid_op(f"The form has more than one {OP_FIELD!r} field.")
    return _field_text(part.stream) or None


def _field_text(stream: BinaryIO) -> str:
    """A short text field, stripped; refused when too long or not UTF-8."""
    data = b""
    while len(data) <= MAX_OP_BYTES and (chunk := stream.read(MAX_OP_BYTES + 1 - len(data))):
        data += chunk
    if len(data) > MAX_OP_BYTES:
        raise _invalid_op(f"The {OP_FIELD!r} field is longer than {MAX_OP_BYTES} bytes.")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _invalid_op(f"The {OP_FIELD!r} field is not UTF-8 text.") from None


def create_app(config: Config, master: MasterClient, readiness: list | None = None) -> falcon.App:
    app = create_base_app(config, readiness=readiness or [], challenge=BASIC_CHALLENGE)
    # as the master's own bounds: half the threads may wait, a quarter hold streams
    long_polls, streams = LongPolls(config.threads // 2), StreamSlots(config.threads // 4)
    jobs = Jobs(master, config.max_wait_seconds, long_polls, streams)
    app.add_route("/", Page())
    app.add_route("/static/{name}", StaticFile())
    app.add_route("/submitTask", jobs, suffix="submit")
    app.add_route("/isReady", jobs, suffix="is_ready")
    app.add_route("/status", jobs, suffix="status")
    app.add_route("/getImage", jobs, suffix="image")
    app.add_route("/cancel", jobs, suffix="cancel")
    app.add_route("/events", jobs, suffix="events")
    return app


def _not_ready(upstream: Response) -> bool:
    return upstream.status_code == 200 and upstream.content.strip() == b"0"


def _in_states(states: frozenset[TaskState], upstream: Response) -> bool:
    """Whether ``upstream`` is a status whose state a long poll waits through."""
    if upstream.status_code != 200:
        return False
    try:
        return TaskState.parse(upstream.json()["stateName"]) in states
    except (ValueError, KeyError, TypeError):
        return False
