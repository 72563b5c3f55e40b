"""The frontend's routes, with the real master, database and storage apps wired in-process."""

from __future__ import annotations

import functools
import inspect
import io
import json
import re
import threading
import time
from collections.abc import Callable
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest
from falcon import testing
from PIL import ExifTags, Image
from urllib3.filepost import encode_multipart_formdata

from darkroom.contract.pipeline import (
    BLUR_RADIUS_HUNDREDTHS,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_WATERMARK_OPACITY,
    MAX_DIMENSION,
    MAX_PIPELINE_CHARS,
    QUALITY_RANGE,
    STEPS,
    WATERMARK_OPACITY_HUNDREDTHS,
    WATERMARK_POSITIONS,
    WATERMARK_TEXT_CHARS,
    normalize_pipeline,
)
from darkroom.core.discovery import ServiceClient, ServiceLocator
from darkroom.core.ids import new_task_id
from darkroom.core.transport import Transport
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient, DatabaseLeases
from darkroom.database.service import open_store
from darkroom.frontend.app import MAX_OP_BYTES, POLL_SLICE_SECONDS, create_app
from darkroom.master.app import create_app as create_master_app
from darkroom.master.client import MasterClient
from darkroom.worker.loop import TaskLoop
from darkroom.worker.operations import ImageRejected, ProcessingSettings, process_image
from support.images import decode, encode, png_bytes
from support.inprocess import StaticRegistry, service_client, storage_by
from support.processes import wait_until
from support.recording import Recorded, RecordingServer
from support.sse import events_in


@pytest.fixture
def system(config):
    """The frontend's client, the task store, and a worker loop to process what it uploads."""
    settings = ProcessingSettings()
    tasks = open_store(config)
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage = storage_by("api", config)
    master_app = create_master_app(
        config,
        DatabaseClient(database),
        storage,
        check_pipeline=lambda text: normalize_pipeline(text, settings),
    )
    master = MasterClient(service_client(master_app, "masterAddress", "master:3"))
    leases = DatabaseLeases(database)  # what a worker calls
    worker = TaskLoop(
        tasks=leases,
        storage=storage,
        process=functools.partial(process_image, settings=settings),
        rejected=ImageRejected,
        claim_wait_seconds=0,
        lease_seconds=5,
        http_timeout=5,
        stop=threading.Event(),
    )

    def work() -> None:
        claim = leases.claim(0, 5)
        assert claim is not None, "a task is queued"
        worker.handle(claim)

    client = testing.TestClient(create_app(config, master))
    return SimpleNamespace(client=client, tasks=tasks, work=work, master=master, config=config)


def form(fields: dict) -> tuple[bytes, str]:
    return encode_multipart_formdata(fields)


def submit(client: testing.TestClient, image: bytes, **params: str) -> testing.Result:
    body, content_type = form({"uploadfile": ("photo.png", image, "image/png")})
    return client.simulate_post(
        "/submitTask", body=body, headers={"Content-Type": content_type}, params=params
    )


def submitted_id(client: testing.TestClient, image: bytes, **params: str) -> str:
    result = submit(client, image, **params)
    assert result.status_code == 200, result.text
    return result.text


def post_form(client: testing.TestClient, fields: list, **params: str) -> testing.Result:
    """POST the fields, in this order, as multipart/form-data."""
    body, content_type = form(fields)
    return client.simulate_post(
        "/submitTask", body=body, headers={"Content-Type": content_type}, params=params
    )


def image_field(image: bytes, name: str = "photo.png") -> tuple:
    return ("uploadfile", (name, image, "image/png"))


# The page and its files ------------------------------------------------------------------------


class PageParts(HTMLParser):
    """What a Content-Security-Policy cares about: scripts, styles, handlers, and linked files."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.inline_styles: list[str] = []
        self.handlers: list[str] = []
        self.linked: list[str] = []
        self.file_inputs: list[dict] = []
        self.inputs: list[dict] = []
        self.label_targets: list[str] = []
        self.forms: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and not attributes.get("src"):
            self.inline_scripts += 1
        if tag == "style" or "style" in attributes:
            self.inline_styles.append(tag)
        self.handlers += [name for name in attributes if name.startswith("on")]
        for name in ("src", "href"):
            if (value := attributes.get(name)) and value.startswith("/static/"):
                self.linked.append(value)
        if tag == "input" and attributes.get("type") == "file":
            self.file_inputs.append(attributes)
        if tag == "input":
            self.inputs.append(attributes)
        if tag == "label" and "for" in attributes:
            self.label_targets.append(attributes["for"])
        if tag == "form":
            self.forms.append(attributes)


@pytest.fixture
def page(system) -> tuple[testing.Result, PageParts]:
    result = system.client.simulate_get("/")
    parts = PageParts()
    parts.feed(result.text)
    return result, parts


def test_page_is_a_form_posting_uploadfile_to_submit_task(page):
    result, parts = page
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/html")
    assert [i["name"] for i in parts.file_inputs] == ["uploadfile"]
    [upload] = parts.forms
    assert upload["action"] == "/submitTask" and upload["method"] == "post"
    assert upload["enctype"] == "multipart/form-data"


def test_page_form_has_an_op_field_without_javascript(page):
    _, parts = page
    # The only named fields are what the no-script form posts; the script builds its own body.
    named = {i["name"]: i for i in parts.inputs if i.get("name")}
    assert set(named) == {"uploadfile", "op"}
    assert named["op"]["type"] == "text"
    assert named["op"]["id"] in parts.label_targets
    result = page[0].text
    noscript = result[result.index("<noscript>") : result.index("</noscript>")]
    assert 'name="op"' in noscript  # shown and sent only when scripts are off
    assert "keep-metadata" in noscript


def test_page_hint_names_the_grammars_steps_in_order(page):
    text = page[0].text
    hint = text[text.index('id="op-plain-hint"') :]
    hint = hint[: hint.index("</p>")]
    assert re.findall(r"<code>([^<]*)</code>", hint) == [rule.syntax for rule in STEPS]


def test_page_bounds_are_the_grammars(page):
    _, parts = page
    inputs = {i["id"]: i for i in parts.inputs if i.get("id")}
    assert inputs["op"]["maxlength"] == inputs["op-plain"]["maxlength"] == str(MAX_PIPELINE_CHARS)
    for name in ("resize-w", "resize-h", "thumbnail-size"):
        assert (inputs[name]["min"], inputs[name]["max"]) == ("1", str(MAX_DIMENSION)), name
    blur = inputs["blur-radius"]
    assert (
        tuple(round(float(blur[bound]) * 100) for bound in ("min", "max")) == BLUR_RADIUS_HUNDREDTHS
    )
    quality = inputs["quality"]
    assert (int(quality["min"]), int(quality["max"])) == QUALITY_RANGE
    assert quality["value"] == str(DEFAULT_JPEG_QUALITY)


def test_builder_offers_keep_metadata_with_a_label(page, system):
    _, parts = page
    [checkbox] = [i for i in parts.inputs if i.get("id") == "op-keep-metadata"]
    assert checkbox["type"] == "checkbox" and "checked" not in checkbox
    assert "op-keep-metadata" in parts.label_targets
    script = system.client.simulate_get("/static/app.js").text
    assert 'on("op-keep-metadata")' in script and '"keep-metadata"' in script


def test_builder_offers_smart_crop_and_watermark(page, system):
    text, parts = page[0].text, page[1]
    assert '<option value="smart">' in text
    inputs = {i["id"]: i for i in parts.inputs if i.get("id")}
    assert inputs["op-watermark"]["type"] == "checkbox" and "op-watermark" in parts.label_targets
    assert inputs["watermark-text"]["maxlength"] == str(WATERMARK_TEXT_CHARS)
    opacity = inputs["watermark-opacity"]
    assert (
        tuple(round(float(opacity[bound]) * 100) for bound in ("min", "max"))
        == WATERMARK_OPACITY_HUNDREDTHS
    )
    assert float(opacity["value"]) * 100 == DEFAULT_WATERMARK_OPACITY
    for position in WATERMARK_POSITIONS:
        assert f'<option value="{position}">' in text
    script = system.client.simulate_get("/static/app.js").text
    assert 'on("op-watermark")' in script


def test_page_works_under_a_strict_content_security_policy(page, system):
    result, parts = page
    policy = result.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy  # no other origin, no CDN
    assert parts.inline_scripts == 0 and parts.inline_styles == [] and parts.handlers == []
    assert set(parts.linked) == {"/static/app.js", "/static/style.css", "/static/icon.svg"}
    for path in parts.linked:
        assert system.client.simulate_get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
        ("index.html", "text/html"),
    ],
)
def test_static_files_have_their_content_types(system, name, content_type):
    result = system.client.simulate_get(f"/static/{name}")
    assert result.status_code == 200
    assert result.headers["content-type"].split(";")[0] == content_type
    assert result.headers["x-content-type-options"] == "nosniff"
    assert result.text


@pytest.mark.parametrize("name", ["missing.js", "app.py", "__init__.py", "..%2Fapp.py", "static"])
def test_unknown_static_files_are_404(system, name):
    result = system.client.simulate_get(f"/static/{name}")
    assert result.status_code == 404
    assert result.json["title"].lower().endswith("not found")


def test_script_uses_the_routes_the_app_serves(system):
    script = system.client.simulate_get("/static/app.js").text
    for route in ("/submitTask", "/status?id=", "/getImage?id="):
        assert route in script
    assert 'upload.addEventListener("progress"' in script
    assert 'body.append("op", op)' in script  # the op as a form field, before the file


# Submitting ------------------------------------------------------------------------------------


def test_submit_without_multipart_is_415(system, png):
    result = system.client.simulate_post(
        "/submitTask", body=png, headers={"Content-Type": "image/png"}
    )
    assert result.status_code == 415
    assert "uploadfile" in result.json["description"]


def test_submit_without_the_field_is_400(system, png):
    body, content_type = form({"picture": ("photo.png", png, "image/png"), "note": "hello"})
    result = system.client.simulate_post(
        "/submitTask", body=body, headers={"Content-Type": content_type}
    )
    assert result.status_code == 400
    assert result.json == {
        "title": "No image",
        "description": "The form has no file field 'uploadfile'.",
    }


def test_submit_forwards_op_and_answers_the_id(system, png):
    task_id = submitted_id(system.client, png, op="Grayscale, resize:4x3")
    assert len(task_id) == 22
    status = system.client.simulate_get("/status", params={"id": task_id})
    assert status.status_code == 200
    assert status.json["pipeline"] == "grayscale,resize:4x3"  # canonical text from the master
    assert status.json["stateName"] == "queued"


def test_submit_forwards_a_webhook_for_the_master_to_check(system, png):
    body, content_type = form({"uploadfile": ("photo.png", png, "image/png")})
    result = system.client.simulate_post(
        "/submitTask",
        body=body,
        headers={"Content-Type": content_type},
        params={"webhook": "https://hooks.example/in"},
    )
    # this master has no webhook secret: its refusal proves the URL reached it
    assert result.status_code == 400
    assert "DARKROOM_WEBHOOK_SECRET" in result.json["description"]


def test_submit_without_op_uses_the_default(system, png):
    task_id = submitted_id(system.client, png)
    assert system.tasks.get(task_id).pipeline == "swap"


def test_submit_relays_the_masters_refusals(system, png):
    bad_op = submit(system.client, png, op="explode")
    assert bad_op.status_code == 400
    assert bad_op.json["title"] == "Invalid operation"
    assert "unknown operation" in bad_op.json["description"]
    not_image = submit(system.client, b"just some words")
    assert not_image.status_code == 415
    assert not_image.json["title"] == "Not a supported image"


class RecordingService:
    """The master's service client, keeping the body of every upload sent to ``/new``."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.uploads: list = []

    def request(self, method: str, path: str, **kwargs):
        if path == "/new":
            self.uploads.append(kwargs.get("data"))
        return self._inner.request(method, path, **kwargs)


@pytest.fixture
def recorded(system, config):
    """A frontend whose uploads to the master are recorded, and the recording."""
    service = RecordingService(system.master.service)
    client = testing.TestClient(create_app(config, MasterClient(service)))
    return SimpleNamespace(client=client, uploads=service.uploads)


def pipeline_of(system, result: testing.Result) -> str:
    assert result.status_code == 200, result.text
    return system.tasks.get(result.text).pipeline


def test_op_field_before_the_file_streams_the_file_through(system, recorded, png):
    result = post_form(recorded.client, [("op", "Grayscale, flip"), image_field(png)])
    assert pipeline_of(system, result) == "grayscale,flip"
    [body] = recorded.uploads
    assert inspect.isgenerator(body)  # chunks of the form part, never the whole image


def test_op_field_after_the_file_spools_it_to_a_temporary_file(system, recorded, png):
    fields = [image_field(png), ("note", "ignored"), ("op", "resize:4x3,keep-metadata")]
    result = post_form(recorded.client, fields)
    assert pipeline_of(system, result) == "resize:4x3,keep-metadata"
    [body] = recorded.uploads
    assert isinstance(body, io.BufferedRandom)  # a file on disk, not the image in memory
    assert body.closed  # removed once the master answered
    system.work()
    result = system.client.simulate_get("/getImage", params={"id": result.text})
    assert decode(result.content).size == (4, 3)


def test_form_without_op_spools_and_uses_the_default(system, recorded, png):
    result = post_form(recorded.client, [image_field(png)])
    assert pipeline_of(system, result) == "swap"
    assert recorded.uploads[0].closed


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_op_field_means_the_default_or_the_query(system, png, position, empty):
    fields = [("op", empty), image_field(png)]
    fields = fields if position == "before" else fields[::-1]
    assert pipeline_of(system, post_form(system.client, fields)) == "swap"
    with_query = post_form(system.client, fields, op="flop")
    assert pipeline_of(system, with_query) == "flop"


@pytest.mark.parametrize("position", ["before", "after"])
def test_invalid_op_field_is_the_masters_400(system, png, position):
    fields = [("op", "grayscale,explode"), image_field(png)]
    fields = fields if position == "before" else fields[::-1]
    result = post_form(system.client, fields)
    assert result.status_code == 400
    assert result.json["title"] == "Invalid operation"
    assert "step 2 'explode': unknown operation" in result.json["description"]
    assert system.tasks.recent(10) == []  # refused before any job was made


@pytest.mark.parametrize(
    ("fields", "params", "description"),
    [
        (
            [("op", "flip"), "image"],
            {"op": "flop"},
            "Give 'op' in the query string or as a form field, not both.",
        ),
        ([("op", "flip"), ("op", "flop"), "image"], {}, "The form has more than one 'op' field."),
        # the whole form is read before the upload to the master ends
        ([("op", "flip"), "image", ("op", "flop")], {}, "The form has more than one 'op' field."),
        (["image", ("op", "flip"), ("op", "flop")], {}, "The form has more than one 'op' field."),
        (
            [("op", "flip," * 2000), "image"],
            {},
            f"The 'op' field is longer than {MAX_OP_BYTES} bytes.",
        ),
        (["image", ("op", b"flip\xff")], {}, "The 'op' field is not UTF-8 text."),
    ],
    ids=["query-and-field", "twice-before", "twice-around", "twice-after", "long", "not-utf8"],
)
def test_op_field_problems_are_400(system, png, fields, params, description):
    fields = [image_field(png) if field == "image" else field for field in fields]
    result = post_form(system.client, fields, **params)
    if description is None:
        assert pipeline_of(system, result) == "flip"
        return
    assert result.status_code == 400
    assert result.json == {"title": "Invalid operation", "description": description}


@pytest.mark.parametrize(
    "fields",
    [[("op", "flip"), "image"], ["image", ("op", "flip")], ["image"]],
    ids=["op-first-streamed", "op-after-spooled", "no-op-spooled"],
)
@pytest.mark.parametrize("cut", ["closing-boundary", "half"])
def test_form_cut_short_is_400_and_submits_nothing(system, png, fields, cut):
    fields = [image_field(png) if field == "image" else field for field in fields]
    body, content_type = form(fields)
    boundary = content_type.partition("boundary=")[2].encode()
    ends = {"closing-boundary": body.rindex(b"\r\n--" + boundary), "half": len(body) // 2}
    result = system.client.simulate_post(
        "/submitTask", body=body[: ends[cut]], headers={"Content-Type": content_type}
    )
    assert result.status_code == 400, result.text
    assert result.json["title"] == "Malformed form"
    assert "nothing was submitted" in result.json["description"]
    assert system.tasks.recent(10) == []


def test_op_field_without_an_image_is_400(system):
    result = post_form(system.client, [("op", "flip")])
    assert result.status_code == 400 and result.json["title"] == "No image"


def test_keep_metadata_through_the_form(system):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "Darkroom Camera"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N"}
    photo = encode(Image.new("RGB", (8, 4), (200, 10, 10)), "JPEG", exif=exif)
    kept = post_form(system.client, [image_field(photo, "a.jpg"), ("op", "jpeg,keep-metadata")])
    stripped = post_form(system.client, [("op", "jpeg"), image_field(photo, "a.jpg")])
    results = {}
    for name, upload in {"kept": kept, "stripped": stripped}.items():
        assert upload.status_code == 200, upload.text
        system.work()
        got = system.client.simulate_get("/getImage", params={"id": upload.text})
        results[name] = decode(got.content)
    assert results["kept"].size == results["stripped"].size == (4, 8)  # upright either way
    kept_exif = results["kept"].getexif()
    assert kept_exif[ExifTags.Base.Make] == "Darkroom Camera"
    assert kept_exif[ExifTags.Base.Orientation] == 1
    assert kept_exif.get_ifd(ExifTags.IFD.GPSInfo) == {ExifTags.GPS.GPSLatitudeRef: "N"}
    assert not results["stripped"].getexif()


# Following a job -------------------------------------------------------------------------------


def test_is_ready_answers_in_words(system, png):
    task_id = submitted_id(system.client, png)
    result = system.client.simulate_get("/isReady", params={"id": task_id})
    assert result.status_code == 200 and result.text == "Your image is not ready yet."
    system.work()
    result = system.client.simulate_get("/isReady", params={"id": task_id})
    assert result.text == "Your image is ready."
    assert result.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("task_id", "status"), [("A" * 22, 404), ("not-an-id", 400), ("", 400), (None, 400)]
)
def test_unknown_or_malformed_ids_are_refused(system, task_id, status):
    params = {} if task_id is None else {"id": task_id}
    for route in ("/isReady", "/status", "/getImage"):
        result = system.client.simulate_get(route, params=params)
        assert result.status_code == status, route
        assert result.json["title"]


def test_status_relays_the_masters_record(system, png):
    task_id = submitted_id(system.client, png, op="flop")
    system.work()
    status = system.client.simulate_get("/status", params={"id": task_id}).json
    assert {"id", "state", "stateName", "pipeline", "attempts", "error"} <= status.keys()
    assert {"createdAt", "updatedAt", "finishedAt"} <= status.keys()
    assert status["id"] == task_id and status["stateName"] == "finished"
    assert status["attempts"] == 1 and status["finishedAt"]


def test_get_image_streams_the_result_as_an_attachment(system):
    image = png_bytes((8, 6), "RGB")
    task_id = submitted_id(system.client, image, op="resize:4x3,jpeg:90")
    early = system.client.simulate_get("/getImage", params={"id": task_id})
    assert early.status_code == 409 and "isReady" in early.json["description"]
    assert early.headers["Retry-After"] == "1", "the master's Retry-After is passed on"
    system.work()
    result = system.client.simulate_get("/getImage", params={"id": task_id})
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/jpeg"
    assert int(result.headers["content-length"]) == len(result.content)
    disposition = result.headers["content-disposition"]
    assert disposition.startswith("attachment") and f"darkroom-{task_id}.jpg" in disposition
    assert decode(result.content).size == (4, 3)


def post_form_query(system, png, query_string: str) -> testing.Result:
    body, content_type = form([image_field(png)])
    headers = {"Content-Type": content_type}
    return system.client.simulate_post(
        "/submitTask", body=body, headers=headers, query_string=query_string
    )


def test_repeated_op_query_parameter_is_400(system, png):
    result = post_form_query(system, png, "op=flip&op=flop")
    assert result.status_code == 400
    assert result.json == {
        "title": "Invalid parameter",
        "description": 'The "op" parameter is invalid. Give it once, not 2 times.',
    }
    assert system.tasks.recent(10) == []


def test_crop_offsets_may_arrive_as_spaces(system, png):
    # The "+" of crop:WxH+X+Y, left unencoded in the query string, is decoded to a space.
    result = post_form_query(system, png, "op=crop:4x3+1+2")
    assert pipeline_of(system, result) == "crop:4x3+1+2"


def test_failed_job_reports_its_reason_everywhere(system):
    task_id = submitted_id(system.client, png_bytes((8, 6)), op="crop:20x20")
    system.work()
    status = system.client.simulate_get("/status", params={"id": task_id}).json
    assert status["stateName"] == "failed" and "outside" in status["error"]
    for route in ("/isReady", "/getImage"):
        result = system.client.simulate_get(route, params={"id": task_id})
        assert result.status_code == 422, route
        assert status["error"] in result.json["description"]


# Cancel and idempotent uploads ----------------------------------------------------------------


def test_cancel_is_relayed_to_the_master(system, png):
    task_id = submitted_id(system.client, png)
    cancelled = system.client.simulate_post("/cancel", params={"id": task_id})
    assert cancelled.status_code == 200 and cancelled.json["stateName"] == "cancelled"
    again = system.client.simulate_post("/cancel", params={"id": task_id})
    assert again.status_code == 200 and again.json == cancelled.json
    gone = system.client.simulate_get("/getImage", params={"id": task_id})
    assert gone.status_code == 410 and gone.json["title"] == "Job cancelled"
    finished = submitted_id(system.client, png)
    system.work()
    refused = system.client.simulate_post("/cancel", params={"id": finished})
    assert refused.status_code == 409 and "finished" in refused.json["description"]
    assert system.client.simulate_post("/cancel", params={"id": "nope"}).status_code == 400


def test_the_page_has_a_cancel_button_that_posts_to_cancel(page, system):
    result, _ = page
    assert 'id="cancel-job"' in result.text
    script = system.client.simulate_get("/static/app.js").text
    assert "/cancel?id=" in script and '$("cancel-job").addEventListener("click"' in script


def test_submit_passes_the_idempotency_key_on_and_the_replay_back(system, png):
    body, content_type = form({"uploadfile": ("photo.png", png, "image/png")})
    headers = {"Content-Type": content_type, "Idempotency-Key": "key-1"}
    first = system.client.simulate_post("/submitTask", body=body, headers=headers)
    again = system.client.simulate_post("/submitTask", body=body, headers=headers)
    assert first.status_code == again.status_code == 200 and again.text == first.text
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    bad = system.client.simulate_post(
        "/submitTask", body=body, headers={**headers, "Idempotency-Key": "a b"}
    )
    assert bad.status_code == 400 and bad.json["title"] == "Invalid Idempotency-Key"


# -- live progress: /events relayed (issue 16) --------------------------------------------------


def test_events_relay_the_masters_stream_with_last_event_id(system, png):
    task_id = submitted_id(system.client, png)
    system.work()
    result = system.client.simulate_get("/events", params={"id": task_id})
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.headers["cache-control"] == "no-cache"
    events = events_in(result.text)
    stages = [event["data"]["stage"] for event in events if event["event"] == "stage"]
    assert stages == ["download", "decode", "swap", "encode", "store"]
    assert events[-1]["data"]["state"] == "finished"
    last = events[-1]["id"]
    before = str(int(last) - 1)
    resumed = system.client.simulate_get(
        "/events", params={"id": task_id}, headers={"Last-Event-ID": before}
    )
    assert [event["id"] for event in events_in(resumed.text)] == [last]
    over = system.client.simulate_get(
        "/events", params={"id": task_id}, headers={"Last-Event-ID": last}
    )
    assert over.status_code == 204


def test_events_pass_the_masters_refusals_on_as_json(system, png):
    assert system.client.simulate_get("/events", params={"id": "A" * 22}).status_code == 404
    task_id = submitted_id(system.client, png)
    bad = system.client.simulate_get(
        "/events", params={"id": task_id}, headers={"Last-Event-ID": "x"}
    )
    assert bad.status_code == 400 and bad.json["title"] == "Invalid Last-Event-ID"


def _frontend_before(master: RecordingServer, config) -> testing.TestClient:
    locator = ServiceLocator(StaticRegistry({"masterAddress": master.address}), ttl=60)
    client = MasterClient(ServiceClient(locator, "masterAddress", Transport(), timeout=5))
    return testing.TestClient(create_app(config, client))


def _waits_then(answers: list[bytes], changed: bytes | None = None) -> Callable[[Recorded], bytes]:
    """A master's long poll: waits what it is asked to, then gives the next of ``answers``;
    once they are given, ``changed`` at once (the task moved on during that slice)."""
    given = iter(answers)

    def answer(request: Recorded) -> bytes:
        if (following := next(given, None)) is None and changed is not None:
            return changed
        time.sleep(float(request.query.get("wait", ["0"])[0]))
        return following if following is not None else answers[-1]

    return answer


def _timed(call: Callable[..., testing.Result], *args: Any, **kwargs: Any):
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started


def test_long_polls_past_half_the_threads_are_passed_on_without_waiting(config):
    # the master(s) behind would let them all wait: the frontend's own threads are bounded
    master = RecordingServer(held=lambda request: "wait" in request.query)
    waiting: list[threading.Thread] = []
    try:
        frontend = _frontend_before(master, config.replace(threads=4))
        poll = functools.partial(
            frontend.simulate_get, "/isReady", params={"id": new_task_id(), "wait": "5"}
        )
        for _ in range(2):  # 4 threads: 2 may wait
            waiting.append(threading.Thread(target=poll))
            waiting[-1].start()
        wait_until(lambda: len(master.received) == 2, 5, "two long polls at the master")
        answered = poll()
        assert answered.status_code == 200, answered.text
        assert "wait" not in master.received[2].query, "over the bound: asked without waiting"
    finally:
        master.release.set()
        for thread in waiting:
            thread.join(10)
        master.close()
    assert all("wait" in request.query for request in master.received[:2])


def test_a_relayed_long_poll_is_asked_in_slices_for_its_whole_wait(config):
    master = RecordingServer(answer=_waits_then([b"0", b"0", b"0"]))
    try:
        frontend = _frontend_before(master, config)
        wait = POLL_SLICE_SECONDS + 0.5
        params = {"id": new_task_id(), "wait": str(wait)}
        answered, took = _timed(frontend.simulate_get, "/isReady", params=params)
    finally:
        master.close()
    assert answered.status_code == 200 and answered.text == "Your image is not ready yet."
    slices = [float(request.query["wait"][0]) for request in master.received]
    assert len(slices) == 2 and slices[0] == POLL_SLICE_SECONDS
    assert sum(slices) == pytest.approx(wait, abs=0.1)
    assert took == pytest.approx(wait, abs=0.5)


def test_a_relayed_long_poll_answers_as_soon_as_a_slice_ends_its_wait(config):
    queued = json.dumps({"stateName": "queued"}).encode()
    running = json.dumps({"stateName": "in progress"}).encode()
    master = RecordingServer(answer=_waits_then([queued], changed=running))
    try:
        frontend = _frontend_before(master, config)
        params = {"id": new_task_id(), "wait": "20", "state": "queued"}
        answered = frontend.simulate_get("/status", params=params)
    finally:
        master.close()
    assert answered.status_code == 200 and answered.json == {"stateName": "in progress"}
    assert len(master.received) == 2, "the second slice's answer ended the wait"
    assert all(request.query["state"] == ["queued"] for request in master.received)


def test_a_relayed_long_poll_answered_at_once_by_a_master_without_a_slot_is_passed_on(config):
    master = RecordingServer(answer=lambda request: b"0")  # no slot: it does not wait
    try:
        frontend = _frontend_before(master, config)
        params = {"id": new_task_id(), "wait": "20"}
        answered, took = _timed(frontend.simulate_get, "/isReady", params=params)
    finally:
        master.close()
    assert answered.text == "Your image is not ready yet."
    assert len(master.received) == 1 and took < 1, "not asked again and again"


@pytest.mark.parametrize(
    ("fields", "framing"),
    [
        # the file first: kept on disk until the op is read, so its length is known
        ([("uploadfile", ("photo.png", b"P" * 5000, "image/png")), ("op", "swap")], "length"),
        # the op first: the file streams straight through, its length unknown
        ([("op", "swap"), ("uploadfile", ("photo.png", b"P" * 5000, "image/png"))], "chunked"),
    ],
)
def test_submit_sends_a_file_on_disk_with_its_length(config, fields, framing):
    master = RecordingServer()
    try:
        transport = Transport()
        locator = ServiceLocator(StaticRegistry({"masterAddress": master.address}), ttl=60)
        client = MasterClient(ServiceClient(locator, "masterAddress", transport, timeout=5))
        frontend = testing.TestClient(create_app(config, client))
        assert post_form(frontend, fields).status_code == 200
    finally:
        master.close()
    (upload,) = master.received
    assert upload.path == "/new" and upload.body == b"P" * 5000
    if framing == "length":
        assert upload.headers["content-length"] == "5000"
        assert "transfer-encoding" not in upload.headers
    else:
        assert upload.headers["transfer-encoding"] == "chunked"
