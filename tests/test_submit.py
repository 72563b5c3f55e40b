"""``darkroom submit`` against a stand-in master served on 127.0.0.1."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import falcon
import pytest

from darkroom.submit import cancel, submit
from harness.launch import free_port


class FakeMaster:
    """Takes any upload as job ``job-1``, finishes it at once, answers a PNG result."""

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

    def on_post_new(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.uploads.append((req.content_length, len(req.bounded_stream.read())))
        self.upload_params.append(dict(req.params))
        self.keys.append(req.get_header("Idempotency-Key"))
        if self.refusals:
            raise self.refusals.pop(0)
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "job-1"

    def on_get_status(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"stateName": self.state, "attempts": 1, "error": None, "notes": self.notes}

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.state == "finished":
            raise falcon.HTTPConflict(title="Job has ended", description="the job is finished")
        self.cancelled.append(req.get_param("id"))
        resp.media = {"id": req.get_param("id"), "stateName": "cancelled"}

    def on_get_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.result_type
        resp.data = b"result bytes"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def master() -> Iterator[tuple[FakeMaster, str]]:
    fake = FakeMaster()
    app = falcon.App()
    app.add_route("/new", fake, suffix="new")
    app.add_route("/status", fake, suffix="status")
    app.add_route("/get", fake, suffix="get")
    app.add_route("/cancel", fake, suffix="cancel")
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


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
    assert "upload" not in err and "job job-1" in err and "finished" in err


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
