"""``darkroom submit`` against a stand-in master served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import re
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon
import pytest

from darkroom.submit import cancel, submit
from harness.launch import free_port
from support.images import png_bytes
from support.processes import Services

STAGES = [("download", 0.6), ("decode", 12.0), ("grayscale", 3.31), ("encode", 1500.0)]
# how submit words them, as the web page does
STAGE_LINES = [
    "    download 0.6 ms",
    "    decode 12 ms",
    "    grayscale 3.3 ms",
    "    encode 1.5 s",
]


# A /events answer: the job has ended and no event follows Last-Event-ID.
NOTHING_MORE = falcon.HTTP_204


@dataclasses.dataclass
class Stream:
    """How the stand-in answers one GET /events: the events after Last-Event-ID, ``count`` of
    them at most (None: all), then the end of the stream (``torn``: halfway through the next
    event), or a cut connection (``drop``: fewer bytes than its Content-Length), or
    ``idle_seconds`` more with a comment line every ``keepalive_seconds`` (None: silence)."""

    count: int | None = None
    torn: bool = False
    drop: bool = False
    idle_seconds: float = 0.0
    keepalive_seconds: float | None = None


class FakeMaster:
    """Takes any upload as job ``job-1``, finishes it at once, answers a PNG result; its
    /events streams the job's events as ``streams`` say, one per connection."""

    def __init__(self, result_type: str = "image/png") -> None:
        self.result_type = result_type
        self.notes: list[str] = []
        self.uploads: list[tuple[int | None, int]] = []  # (Content-Length, bytes read)
        self.upload_params: list[dict[str, str]] = []
        self.keys: list[str | None] = []  # each upload's Idempotency-Key
        # the answers to the first uploads, before the job id: an HTTPError to raise each
        self.refusals: list[falcon.HTTPError] = []
        self.state = "finished"
        self.cancelled: list[str] = []
        self.status_params: list[dict[str, str]] = []
        # how each GET /events is answered, in turn (then: every event, to the end)
        self.streams: list[Stream | falcon.HTTPError | str] = []
        self.last_event_ids: list[str | None] = []  # each GET /events' Last-Event-ID

    def on_post_new(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.uploads.append((req.content_length, len(req.bounded_stream.read())))
        self.upload_params.append(dict(req.params))
        self.keys.append(req.get_header("Idempotency-Key"))
        if self.refusals:
            raise self.refusals.pop(0)
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "job-1"

    def on_get_status(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.status_params.append(dict(req.params))
        resp.media = {"stateName": self.state, "attempts": 1, "error": None, "notes": self.notes}

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.state == "finished":
            raise falcon.HTTPConflict(title="Job has ended", description="the job is finished")
        self.cancelled.append(req.get_param("id"))
        resp.media = {"id": req.get_param("id"), "stateName": "cancelled"}

    def on_get_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.result_type
        resp.data = b"result bytes"

    def events(self) -> list[tuple[str, dict]]:
        """The job's events as the master numbers them from 1: (kind, data)."""
        states = [{"state": state} for state in ("uploading", "queued", "in progress")]
        events = [("state", data) for data in states]
        if self.state in ("finished", "failed"):
            for number, (stage, took) in enumerate(STAGES):
                events.append(("stage", {"stage": stage, "startMs": number, "durationMs": took}))
        if self.state in ("finished", "failed", "cancelled"):
            events.append(("state", {"state": self.state}))
        return events

    def on_get_events(self, req: falcon.Request, resp: falcon.Response) -> None:
        last_id = req.get_header("Last-Event-ID")
        self.last_event_ids.append(last_id)
        plan = self.streams.pop(0) if self.streams else Stream()
        if isinstance(plan, falcon.HTTPError):
            raise plan
        if plan == NOTHING_MORE:
            resp.status = falcon.HTTP_204
            return
        events = list(enumerate(self.events(), 1))[int(last_id or 0) :]
        messages = [
            f"id: {number}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            for number, (kind, data) in events[: plan.count]
        ]
        if plan.torn:
            messages, cut = messages[:-1], messages[-1]
            messages.append(cut[: len(cut) // 2])
        resp.content_type = "text/event-stream"
        if plan.drop:
            resp.content_length = 10_000 + sum(len(message) for message in messages)
        resp.stream = _sent(messages, plan)


def _sent(messages: list[bytes], plan: Stream) -> Iterator[bytes]:
    yield b"retry: 1000\n\n"
    yield from messages
    idle_until = time.monotonic() + plan.idle_seconds
    while (left := idle_until - time.monotonic()) > 0:
        time.sleep(min(plan.keepalive_seconds or left, left))
        if plan.keepalive_seconds:
            yield b": keep-alive\n\n"


class PostOnlyEvents(FakeMaster):
    """A master whose /events takes no GET (405): some other, older route of that name."""

    on_get_events = None

    def on_post_events(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stream still open does not hold up the next request


@contextmanager
def served(fake: FakeMaster, routes: tuple[str, ...]) -> Iterator[str]:
    """The stand-in on 127.0.0.1 (its address), each route its responders of that suffix."""
    app = falcon.App()
    for route in routes:
        app.add_route(f"/{route}", fake, suffix=route)
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


ROUTES = ("new", "status", "get", "cancel")


@pytest.fixture
def master() -> Iterator[tuple[FakeMaster, str]]:
    fake = FakeMaster()
    with served(fake, (*ROUTES, "events")) as address:
        yield fake, address


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG" + bytes(300_000))
    return path


def test_a_master_that_is_down_is_named_unreachable(photo, capsys):
    """It said "cannot read photo.png: None": requests' ConnectionError is an OSError."""
    address = f"127.0.0.1:{free_port()}"
    assert submit(photo, None, address, None, 5, progress=False, retry_delays=(0.01,)) == 1
    err = capsys.readouterr().err
    assert f"the master at {address} is unreachable" in err and "cannot read" not in err
    assert "sending it again" in err, "tried twice"


def test_a_missing_file_is_named(tmp_path, capsys, master):
    _, address = master
    assert submit(tmp_path / "nope.png", None, address, None, 5, progress=False) == 1
    assert "cannot read" in capsys.readouterr().err


def test_upload_progress_counts_the_bytes_and_the_body_keeps_its_length(photo, capsys, master):
    fake, address = master
    assert submit(photo, None, address, None, 5, progress=True) == 0
    size = photo.stat().st_size
    assert fake.uploads == [(size, size)]
    err = capsys.readouterr().err
    assert "upload" in err and "293k/293k" in err  # tqdm's bytes, in KiB
    assert "waiting" in err and "00:00" in err  # the time waited
    assert (photo.parent / "photo-darkroom.png").read_bytes() == b"result bytes"


def test_no_progress_bars_when_not_on_a_terminal(photo, capsys, master):
    assert submit(photo, None, master[1], None, 5, progress=False) == 0
    err = capsys.readouterr().err
    assert "upload:" not in err and "job job-1" in err and "finished" in err


def test_an_output_named_for_another_format_is_warned_about(photo, tmp_path, capsys, master):
    out = tmp_path / "out.jpg"
    assert submit(photo, out, master[1], None, 5, progress=False) == 0
    err = capsys.readouterr().err
    assert "warning: the result is image/png but out.jpg names image/jpeg" in err
    assert out.read_bytes() == b"result bytes"
    assert submit(photo, tmp_path / "out.png", master[1], None, 5, progress=False) == 0
    assert "warning" not in capsys.readouterr().err


def test_an_avif_result_is_saved_with_its_extension(photo, capsys, master):
    fake, address = master
    fake.result_type = "image/avif"
    assert submit(photo, None, address, "avif", 5, progress=False) == 0
    assert (photo.parent / "photo-darkroom.avif").read_bytes() == b"result bytes"


def test_the_warning_advises_only_output_steps_that_exist(photo, tmp_path, capsys, master):
    assert submit(photo, tmp_path / "out.avif", master[1], None, 5, progress=False) == 0
    assert "out.avif names image/avif; saved as image/png (add avif to --op" in (
        capsys.readouterr().err
    )
    assert submit(photo, tmp_path / "out.heic", master[1], None, 5, progress=False) == 0
    err = capsys.readouterr().err
    assert "out.heic names image/heic; saved as image/png\n" in err and "add heic" not in err


def test_the_jobs_notes_are_shown_once_it_is_finished(photo, capsys, master):
    fake, address = master
    fake.notes = ["metadata removed: EXIF (GPS position), XMP"]
    assert submit(photo, None, address, None, timeout=10, progress=False) == 0
    assert "  metadata removed: EXIF (GPS position), XMP" in capsys.readouterr().err


def test_the_webhook_is_sent_with_the_upload(photo, master):
    fake, address = master
    url = "https://hooks.example/in?token=t"
    assert submit(photo, None, address, "grayscale", 5, progress=False, webhook=url) == 0
    assert fake.upload_params == [{"op": "grayscale", "webhook": url}]
    assert submit(photo, None, address, None, 5, progress=False) == 0
    assert fake.upload_params[1] == {}


def test_each_upload_has_its_own_idempotency_key(photo, master):
    fake, address = master
    assert submit(photo, None, address, None, 5, progress=False) == 0
    assert submit(photo, None, address, None, 5, progress=False) == 0
    first, second = fake.keys
    assert uuid.UUID(first).version == 4 and first != second


def test_an_upload_is_sent_again_with_the_same_key(photo, capsys, master):
    fake, address = master
    fake.refusals = [
        falcon.HTTPServiceUnavailable(title="Service unavailable", description="restarting"),
        falcon.HTTPConflict(title="Upload in progress", description="the first is stored"),
    ]
    assert submit(photo, None, address, None, 5, progress=False, retry_delays=(0, 0)) == 0
    assert len(fake.keys) == 3 and len(set(fake.keys)) == 1
    size = photo.stat().st_size
    assert fake.uploads == [(size, size)] * 3, "each try sends the whole file"
    assert "job job-1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "refusal",
    [
        falcon.HTTPUnprocessableEntity(title="Idempotency key reused", description="other body"),
        falcon.HTTPConflict(title="Task cancelled", description="cancelled while uploading"),
        falcon.HTTPUnsupportedMediaType(title="Not a supported image", description="PDF"),
    ],
)
def test_a_refusal_is_not_retried(photo, capsys, master, refusal):
    fake, address = master
    fake.refusals = [refusal]
    assert submit(photo, None, address, None, 5, progress=False, retry_delays=(0, 0)) == 1
    assert len(fake.keys) == 1
    assert f"upload refused: {refusal.status[:3]} {refusal.title}" in capsys.readouterr().err


def test_a_job_cancelled_while_waiting_is_said_so(photo, capsys, master):
    fake, address = master
    fake.state = "cancelled"
    assert submit(photo, None, address, None, 5, progress=False) == 1
    assert "darkroom: job cancelled" in capsys.readouterr().err


def test_cancel_prints_the_new_state_or_why_not(capsys, master):
    fake, address = master
    fake.state = "queued"
    assert cancel("job-1", address) == 0
    assert fake.cancelled == ["job-1"]
    assert capsys.readouterr().out == "job job-1 cancelled\n"
    fake.state = "finished"
    assert cancel("job-1", address) == 1
    assert "job job-1 not cancelled: 409 Job has ended: the job is finished" in (
        capsys.readouterr().err
    )
    assert cancel("job-1", f"127.0.0.1:{free_port()}") == 1
    assert "is unreachable" in capsys.readouterr().err


def test_each_state_and_stage_is_printed_in_order_from_the_events(photo, capsys, master):
    fake, address = master
    assert submit(photo, None, address, None, 5, progress=False) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "job job-1",
        "  uploading",
        "  queued",
        "  in progress",
        *STAGE_LINES,
        "  finished",
    ]
    assert fake.last_event_ids == [None]
    # the end's facts (its notes) from one /status, no long poll
    assert fake.status_params == [{"id": "job-1", "wait": "0", "state": "finished"}]


def test_the_bar_names_the_state_and_the_stage_reached(photo, capsys, master):
    assert submit(photo, None, master[1], None, 5, progress=True) == 0
    err = capsys.readouterr().err
    assert "in progress: encode" in err and "    encode 1.5 s" in err
    assert "finished" in err


@pytest.mark.parametrize(
    "end",
    [{}, {"drop": True}, {"torn": True}],
    ids=["ended early", "connection cut", "ended mid-event"],
)
def test_a_stream_that_ends_early_is_resumed_with_last_event_id(photo, capsys, master, end):
    fake, address = master
    # torn: an event more, of which half is sent
    more = 1 if end.get("torn") else 0
    fake.streams = [Stream(count=3 + more, **end), Stream(count=2 + more, **end)]
    delays = (0.01, 0.01)  # one in a row each time: a stream that brought events resets them
    assert submit(photo, None, address, None, 5, progress=False, event_retry_delays=delays) == 0
    assert fake.last_event_ids == [None, "3", "5"]
    lines = capsys.readouterr().err.splitlines()
    assert lines[1:] == ["  uploading", "  queued", "  in progress", *STAGE_LINES, "  finished"]


def test_a_stream_that_keeps_failing_gives_way_to_long_polls(photo, capsys, master):
    fake, address = master
    fake.state = "queued"
    fake.streams = [Stream(count=2), Stream(count=0), Stream(count=0), Stream(count=0)]
    code = submit(photo, None, address, None, 0.5, progress=False, event_retry_delays=(0, 0))
    assert code == 1
    assert fake.last_event_ids == [None, "2", "2"], "twice more, then no more"
    err = capsys.readouterr().err
    assert "  the event stream keeps failing: following the job with long polls" in err
    assert err.count("  queued") == 1, "the state already shown is not shown again"
    assert {"id": "job-1", "wait": "0", "state": "queued"} in fake.status_params
    assert "darkroom: still queued after 0.5 s" in err


def test_nothing_more_to_stream_leaves_the_end_to_the_status(photo, capsys, master):
    fake, address = master
    fake.notes = ["metadata removed: EXIF"]
    fake.streams = [Stream(count=3), NOTHING_MORE]
    assert submit(photo, None, address, None, 5, progress=False, event_retry_delays=(0,)) == 0
    assert fake.last_event_ids == [None, "3"]
    lines = capsys.readouterr().err.splitlines()
    assert lines[1:] == [
        "  uploading",
        "  queued",
        "  in progress",
        "  finished (attempt 1)",
        "  metadata removed: EXIF",
    ]
    assert fake.status_params == [{"id": "job-1", "wait": "0", "state": "in progress"}]


@pytest.fixture(params=["404", "405"])
def older_master(request) -> Iterator[tuple[FakeMaster, str]]:
    """A master without /events: no such route (404), or one that takes no GET (405)."""
    fake, routes = (
        (FakeMaster(), ROUTES)
        if request.param == "404"
        else (
            PostOnlyEvents(),
            (*ROUTES, "events"),
        )
    )
    with served(fake, routes) as address:
        yield fake, address


def test_an_older_master_without_events_is_long_polled(photo, capsys, older_master):
    fake, address = older_master
    assert submit(photo, None, address, None, 5, progress=False) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["job job-1", "  finished (attempt 1)"]  # no word of /events
    assert fake.status_params == [{"id": "job-1", "wait": "0"}]


def test_a_master_with_no_stream_free_is_long_polled(photo, capsys, master):
    fake, address = master
    busy = falcon.HTTPServiceUnavailable(title="Too many event streams", description="later")
    fake.streams = [busy]
    assert submit(photo, None, address, None, 5, progress=False) == 0
    err = capsys.readouterr().err
    assert "  no event stream free (503 Too many event streams: later):" in err
    assert "  finished (attempt 1)" in err
    assert fake.last_event_ids == [None], "asked once"


@pytest.mark.parametrize("keepalive", [0.1, None], ids=["keep-alive comments", "silence"])
def test_the_timeout_is_honoured_while_the_stream_stays_open(photo, capsys, master, keepalive):
    fake, address = master
    fake.state = "in progress"
    # the stand-in's stream outlasts the timeout (bounded: 5 s)
    fake.streams = [Stream(idle_seconds=5, keepalive_seconds=keepalive)]
    started = time.monotonic()
    assert submit(photo, None, address, None, 1, progress=False) == 1
    took = time.monotonic() - started
    assert "darkroom: still in progress after 1 s" in capsys.readouterr().err
    assert 1 <= took < 2.5


E2E_PIPELINE = "grayscale,resize:8x8,flip"


@pytest.mark.e2e
def test_the_real_system_streams_every_state_and_stage_to_submit(tmp_path, capsys):
    services = Services(tmp_path / "data", tmp_path, lease_seconds="3", concurrency="2")
    try:
        services.start_all()
        photo = tmp_path / "photo.png"
        photo.write_bytes(png_bytes((32, 24), "RGB"))
        master = services.url("master").removeprefix("http://")
        assert submit(photo, None, master, E2E_PIPELINE, 30, progress=False) == 0
    finally:
        services.stop_all()
    lines = capsys.readouterr().err.splitlines()
    stages = ["download", "decode", "grayscale", "resize:8x8", "flip", "encode", "store"]
    took = r"\d+(\.\d)? (ms|s)"
    expected = [
        "job .+",
        "  uploading",
        "  queued",
        "  in progress",
        *(f"    {re.escape(stage)} {took}" for stage in stages),
        "  finished",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert (tmp_path / "photo-darkroom.png").stat().st_size > 0
