"""The frontend page in headless Chromium against the real services."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest
import requests
from PIL import ExifTags, Image, ImageDraw

from support.images import decode, noise_png, png_bytes
from support.processes import Services, wait_until

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install playwright"
)
expect = sync_api.expect

pytestmark = pytest.mark.browser

JOB_TIMEOUT_MS = 30_000
TASK_ID_LENGTH = 22
SCREENSHOT_ENV = "DARKROOM_UPDATE_SCREENSHOT"  # set to 1 to refresh docs/screenshots/frontend.png
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "frontend.png"


def photo_jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    """A photo-like JPEG: a dusk sky, a sun, hills, and sensor noise."""
    width, height = size
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(
        Image.new("RGB", size, (250, 160, 110)), Image.new("RGB", size, (35, 60, 130)), gradient
    )
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.6, height * 0.35, width * 0.75, height * 0.55), fill=(255, 225, 150))
    for layer, colour in enumerate([(60, 80, 95), (30, 45, 55)]):
        base = height * (0.62 + 0.12 * layer)
        ridge = [
            (x, base - 35 * math.sin(x / (70 + 40 * layer) + layer) - 12 * math.sin(x / 17))
            for x in range(0, width + 8, 8)
        ]
        draw.polygon([(0, height), *ridge, (width, height)], fill=colour)
    noise = Image.merge("RGB", [Image.effect_noise(size, 40)] * 3)
    image = Image.blend(image, noise, 0.08)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photo_with_exif(size: tuple[int, int] = (64, 48)) -> bytes:
    """A photo that says: turn me clockwise, taken with this camera, here."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "Darkroom Camera"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N"}
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(size))).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def save_for_docs(screenshot: Path, destination: Path) -> None:
    """A 256-colour copy for the README: under half the size, no visible banding."""
    image = Image.open(screenshot).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(destination, optimize=True)
    assert destination.stat().st_size < 300_000


def file_payload(name: str, data: bytes, mime_type: str) -> dict:
    return {"name": name, "mimeType": mime_type, "buffer": data}


def choose_two_operations(page) -> None:
    page.get_by_label("Swap red and green").uncheck()
    page.get_by_label("Grayscale").check()
    page.get_by_label("Resize", exact=True).check()
    page.get_by_label("Resize width in pixels").fill("320")
    page.get_by_label("Resize height in pixels").fill("240")
    expect(page.get_by_label("Pipeline")).to_have_value("grayscale,resize:320x240")


def wait_finished(page) -> str:
    expect(page.locator("#job-state")).to_have_text("finished", timeout=JOB_TIMEOUT_MS)
    return page.locator("#job-id").inner_text()


def wait_image(page, selector: str) -> dict:
    """The image's natural size once it has loaded and decoded in the page."""
    page.wait_for_function(
        "(selector) => { const img = document.querySelector(selector);"
        " return img && img.complete && img.naturalWidth > 0; }",
        arg=selector,
        timeout=10_000,
    )
    return page.eval_on_selector(
        selector, "img => ({width: img.naturalWidth, height: img.naturalHeight})"
    )


def upload_photo(page, name: str = "dusk.jpg") -> str:
    page.get_by_label("Choose an image").set_input_files(
        file_payload(name, photo_jpeg(), "image/jpeg")
    )
    choose_two_operations(page)
    page.get_by_role("button", name="Process image").click()
    return wait_finished(page)


def master_result(services: Services, task_id: str) -> bytes:
    response = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def test_upload_with_two_operations_preview_and_download(page, services, artifacts):
    photo = photo_jpeg()
    page.get_by_label("Choose an image").set_input_files(
        file_payload("dusk.jpg", photo, "image/jpeg")
    )
    expect(page.locator("#drop-file")).to_contain_text("dusk.jpg")
    assert wait_image(page, "#before") == {"width": 640, "height": 480}
    choose_two_operations(page)

    page.get_by_role("button", name="Process image").click()
    task_id = wait_finished(page)

    assert len(task_id) == TASK_ID_LENGTH
    assert page.eval_on_selector("#progress", "bar => bar.value") == 100
    expect(page.locator("#job-pipeline")).to_have_text("grayscale,resize:320x240")
    expect(page.get_by_role("alert")).to_be_empty()
    assert wait_image(page, "#after") == {"width": 320, "height": 240}
    with page.expect_download(timeout=10_000) as download_info:
        page.get_by_role("link", name="Download the result").click()
    download = download_info.value
    assert download.suggested_filename == f"darkroom-{task_id}.png"
    downloaded = Path(download.path()).read_bytes()
    assert downloaded == master_result(services, task_id)
    result = decode(downloaded)
    assert result.size == (320, 240) and result.mode == "L"

    shot = artifacts / "frontend-finished.png"
    page.screenshot(path=shot, full_page=True)
    if os.environ.get(SCREENSHOT_ENV) == "1":
        save_for_docs(shot, DOCS_SCREENSHOT)


def test_non_image_shows_the_server_error(page):
    page.get_by_label("Choose an image").set_input_files(
        file_payload("notes.txt", b"just some words, no pixels\n", "text/plain")
    )
    expect(page.locator("#before-note")).to_have_text("No preview for this file type.")
    page.get_by_role("button", name="Process image").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Not a supported image", timeout=10_000)
    expect(alert).to_contain_text("not an image in a supported format")
    expect(page.locator("#recent")).to_be_hidden()


def test_failed_job_shows_its_reason(page):
    page.get_by_label("Choose an image").set_input_files(
        file_payload("small.jpg", photo_jpeg(), "image/jpeg")
    )
    page.get_by_label("Pipeline").fill("crop:900x900")  # hand-edited: larger than the image
    page.get_by_role("button", name="Process image").click()
    expect(page.locator("#job-state")).to_have_text("failed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-reason")).to_contain_text("outside the 640x480 image")
    expect(page.locator("#after-note")).to_have_text("No result: the job failed.")
    expect(page.get_by_role("link", name="Download the result")).to_be_hidden()


def test_recent_job_survives_a_reload(page):
    task_id = upload_photo(page, "holiday.jpg")
    page.reload()
    job = page.get_by_role("button", name="holiday.jpg")
    expect(job).to_be_visible()
    expect(job).to_contain_text("grayscale,resize:320x240")
    expect(page.locator("#job-facts")).to_be_hidden()

    job.click()
    assert wait_finished(page) == task_id
    assert wait_image(page, "#after")["width"] == 320
    expect(job).to_have_attribute("aria-current", "true")
    expect(page.get_by_role("link", name="Download the result")).to_have_attribute(
        "href", f"/getImage?id={task_id}"
    )

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#recent")).to_be_hidden()
    page.reload()
    expect(page.locator("#recent")).to_be_hidden()


def tab_to(page, selector: str, limit: int = 30) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} is not reachable with Tab")


def test_keyboard_alone_chooses_builds_and_submits(page):
    # expect_file_chooser turns interception on without waiting, so a quick key press can open
    # a chooser nobody catches; listening from before the page loads avoids that race.
    page.on("filechooser", lambda chooser: None)
    page.reload()
    tab_to(page, "#uploadfile")
    with page.expect_file_chooser(timeout=5_000) as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(file_payload("keys.jpg", photo_jpeg((320, 240)), "image/jpeg"))
    expect(page.locator("#drop-file")).to_contain_text("keys.jpg")

    tab_to(page, "#op-swap")
    page.keyboard.press("Space")
    tab_to(page, "#op-flop")
    page.keyboard.press("Space")
    tab_to(page, "#format")
    page.keyboard.press("ArrowDown")  # PNG -> JPEG
    tab_to(page, "#quality")
    page.keyboard.press("Control+A")
    page.keyboard.type("70")
    expect(page.get_by_label("Pipeline")).to_have_value("flop,jpeg:70")
    tab_to(page, "#submit")
    page.keyboard.press("Enter")

    task_id = wait_finished(page)
    tab_to(page, "#download")
    with page.expect_download(timeout=10_000) as download_info:
        page.keyboard.press("Enter")
    assert download_info.value.suggested_filename == f"darkroom-{task_id}.jpg"


def test_drop_an_image_on_the_page(page):
    data = list(photo_jpeg((200, 150)))
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            const file = new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"});
            transfer.items.add(file);
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop")).to_have_class("drop dragging")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-file")).to_contain_text("dropped.jpg")
    expect(page.locator("#drop")).to_have_class("drop")
    assert wait_image(page, "#before") == {"width": 200, "height": 150}
    page.get_by_role("button", name="Process image").click()
    wait_finished(page)
    assert wait_image(page, "#after")["width"] == 200  # the default operation keeps the size


def test_phone_screen_needs_no_sideways_scrolling(open_page):
    page = open_page(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page.get_by_label("Choose an image").set_input_files(
        file_payload("phone.jpg", photo_jpeg(), "image/jpeg")
    )
    page.get_by_label("Resize", exact=True).check()
    wait_image(page, "#before")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    outside = page.evaluate(
        """() => [...document.querySelectorAll("input:not([type=file]), select, button, label")]
            .filter((control) => {
                const panel = control.closest(".panel").getBoundingClientRect();
                const box = control.getBoundingClientRect();
                return box.width > 0 && (box.left < panel.left || box.right > panel.right);
            })
            .map((control) => control.id || control.textContent.trim())"""
    )
    assert outside == [], "controls stick out of their panel"
    button = page.get_by_role("button", name="Process image").bounding_box()
    assert button is not None and button["x"] + button["width"] <= 360


def test_keep_metadata_checkbox_keeps_the_exif(page, services):
    page.get_by_label("Choose an image").set_input_files(
        file_payload("gps.jpg", photo_with_exif(), "image/jpeg")
    )
    page.get_by_label("Swap red and green").uncheck()
    page.get_by_label("Keep metadata").check()
    expect(page.get_by_label("Pipeline")).to_have_value("keep-metadata")
    page.get_by_role("button", name="Process image").click()
    task_id = wait_finished(page)
    expect(page.locator("#job-pipeline")).to_have_text("keep-metadata")
    result = decode(master_result(services, task_id))
    assert result.size == (48, 64)  # turned upright...
    exif = result.getexif()
    assert exif[ExifTags.Base.Orientation] == 1  # ...so the kept EXIF says so
    assert exif[ExifTags.Base.Make] == "Darkroom Camera"
    assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {ExifTags.GPS.GPSLatitudeRef: "N"}

    expect(page.locator("#job-notes")).to_have_text("")

    page.get_by_label("Keep metadata").uncheck()
    expect(page.get_by_label("Pipeline")).to_have_value("png")
    page.get_by_role("button", name="Process image").click()
    expect(page.locator("#job-pipeline")).to_have_text("png")
    stripped = decode(master_result(services, wait_finished(page)))
    assert stripped.size == (48, 64) and not stripped.getexif()
    # The metadata report: the page says what the result dropped.
    expect(page.locator("#job-notes")).to_contain_text("metadata removed: EXIF (GPS position")


def test_builder_makes_a_smart_crop_with_a_watermark(page, services):
    page.get_by_label("Choose an image").set_input_files(
        file_payload("dusk.jpg", photo_jpeg(), "image/jpeg")
    )
    page.get_by_label("Swap red and green").uncheck()
    page.get_by_label("Resize", exact=True).check()
    page.get_by_label("Resize width in pixels").fill("200")
    page.get_by_label("Resize height in pixels").fill("200")
    page.get_by_label("Resize mode").select_option("smart")
    page.get_by_label("Watermark", exact=True).check()
    page.get_by_label("Watermark text").fill("© Ann")
    page.get_by_label("Watermark position").select_option("top-left")
    page.get_by_label("Watermark opacity from 0.01 to 1").fill("0.8")
    pipeline = "resize:200x200:smart,watermark:© Ann:top-left:0.8"
    expect(page.get_by_label("Pipeline")).to_have_value(pipeline)
    page.get_by_role("button", name="Process image").click()
    task_id = wait_finished(page)
    expect(page.locator("#job-pipeline")).to_have_text(pipeline)
    assert decode(master_result(services, task_id)).size == (200, 200)


@pytest.mark.parametrize(
    ("typed", "pipeline", "size"),
    [
        ("", "swap", (48, 64)),
        (
            " Grayscale, resize:24x32 ,keep-metadata",
            "grayscale,resize:24x32,keep-metadata",
            (24, 32),
        ),
    ],
    ids=["default", "typed"],
)
def test_form_works_without_javascript(open_page, services, typed, pipeline, size):
    page = open_page(java_script_enabled=False)
    expect(page.locator("#builder")).to_be_hidden()
    page.locator("#uploadfile").set_input_files(
        file_payload("plain.jpg", photo_with_exif((64, 48)), "image/jpeg")
    )
    page.get_by_label("Operations").fill(typed)
    page.get_by_role("button", name="Process image").click()
    page.wait_for_url("**/submitTask")
    task_id = page.locator("body").inner_text().strip()
    assert len(task_id) == TASK_ID_LENGTH

    def finished() -> bool:
        response = requests.get(
            services.url("master", "/status"), params={"id": task_id}, timeout=5
        )
        return response.json()["stateName"] == "finished"

    wait_until(finished, 30, f"task {task_id} to finish", interval=0.1)
    status = requests.get(services.url("master", "/status"), params={"id": task_id}, timeout=5)
    assert status.json()["pipeline"] == pipeline
    result = decode(master_result(services, task_id))
    assert result.size == size
    assert bool(result.getexif()) == pipeline.endswith("keep-metadata")


def test_form_without_javascript_shows_an_invalid_op(open_page):
    page = open_page(java_script_enabled=False)
    page.locator("#uploadfile").set_input_files(
        file_payload("plain.jpg", photo_jpeg((64, 48)), "image/jpeg")
    )
    page.get_by_label("Operations").fill("grayscale,explode")
    page.get_by_role("button", name="Process image").click()
    page.wait_for_url("**/submitTask")
    body = page.locator("body").inner_text()
    assert "Invalid operation" in body and "step 2 'explode': unknown operation" in body


def test_a_jobs_webhook_delivery_is_shown_until_it_settles(page):
    # This system has no webhook secret: the master's answers are given a webhook field here,
    # pending twice, then delivered, as a master with one answers while it delivers.
    answers = {"count": 0}

    def with_webhook(route):
        response = route.fetch()
        task = response.json()
        answers["count"] += task["stateName"] == "finished"
        delivered = answers["count"] > 2
        task["webhook"] = {
            "url": "https://hooks.example/in?redacted",
            "state": "delivered" if delivered else "pending",
            "attempts": 1 if delivered else 0,
            "nextAttemptAt": None,
            "last": [{"at": task["updatedAt"], "status": 204, "error": None}] if delivered else [],
        }
        route.fulfill(response=response, json=task)

    page.route("**/status?*", with_webhook)
    page.get_by_label("Choose an image").set_input_files(
        file_payload("small.png", png_bytes((8, 6)), "image/png")
    )
    page.get_by_role("button", name="Process image").click()
    wait_finished(page)
    webhook = page.locator("#job-webhook")
    expect(webhook).to_contain_text("https://hooks.example/in?redacted")
    expect(webhook).to_have_text(
        "Webhook to https://hooks.example/in?redacted: delivered, 1 attempt (last: 204)",
        timeout=JOB_TIMEOUT_MS,
    )


def test_a_running_job_is_cancelled_with_its_button(page, services):
    # Several heavy steps on a photo-sized image that does not compress: seconds of work.
    page.get_by_label("Choose an image").set_input_files(
        file_payload("noise.png", noise_png((2400, 2400), seed=11), "image/png")
    )
    page.get_by_label("Pipeline").fill("blur:50,rotate:33,blur:50,sharpen,blur:50")
    page.get_by_role("button", name="Process image").click()
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible(timeout=JOB_TIMEOUT_MS)
    cancel.click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#after-note")).to_have_text("No result: the job was cancelled.")
    expect(cancel).to_be_hidden()
    expect(page.get_by_role("link", name="Download the result")).to_be_hidden()
    task_id = page.locator("#job-id").inner_text()
    gone = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=10)
    assert gone.status_code == 410


# -- live progress (issue 16): the event stream, and polling without it -------------------------


def watch_requests(page) -> list[str]:
    paths: list[str] = []
    page.on("request", lambda request: paths.append(request.url.split("/", 3)[-1]))
    return paths


def test_the_page_shows_each_stage_as_the_event_stream_tells_it(page):
    sent = watch_requests(page)
    task_id = upload_photo(page, "stages.jpg")
    stages = page.locator("#job-stages li")
    expect(stages).to_have_count(6)
    names = [stages.nth(n).get_attribute("data-stage") for n in range(6)]
    assert names == ["download", "decode", "grayscale", "resize:320x240", "encode", "store"]
    expect(stages.nth(0)).to_contain_text(" ms")
    assert wait_image(page, "#after") == {"width": 320, "height": 240}
    assert f"events?id={task_id}" in sent
    # followed by its events, then one /status for the final facts: no long polls
    assert not [path for path in sent if path.startswith("status") and "wait=" in path]


def test_without_event_source_the_page_long_polls_the_status(page):
    page.add_init_script("delete window.EventSource;")
    page.reload()
    sent = watch_requests(page)
    upload_photo(page, "polled.jpg")
    assert wait_image(page, "#after") == {"width": 320, "height": 240}
    assert not [path for path in sent if path.startswith("events")]
    assert [path for path in sent if path.startswith("status")]
    expect(page.locator("#job-stages li")).to_have_count(0)
