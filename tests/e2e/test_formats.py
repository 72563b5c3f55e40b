"""HEIC in, AVIF out, and an animated GIF resized staying animated, through the real services."""

from __future__ import annotations

import io

import pillow_heif
import pytest
import requests
from PIL import Image

from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e


def _process(services: Services, body: bytes, op: str) -> tuple[str, requests.Response]:
    """Upload ``body`` with ``op``, wait until it is finished; its id and its result."""
    new = requests.post(services.url("master", "/new"), data=body, params={"op": op}, timeout=10)
    assert new.status_code == 200, new.text
    status_url, task_id = services.url("master", "/status"), new.text

    def finished() -> bool:
        state = requests.get(status_url, params={"id": task_id}, timeout=10).json()
        assert state["stateName"] != "failed", state["error"]
        return state["stateName"] == "finished"

    wait_until(finished, 30, f"task {task_id} to finish")
    result = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=10)
    assert result.status_code == 200, result.text
    return task_id, result


def test_heic_in_avif_out_and_an_animated_gif_stays_animated(services):
    services.start_all()
    heic = pillow_heif.from_pillow(Image.new("RGB", (64, 48), (200, 30, 30)))
    body = io.BytesIO()
    heic.save(body, quality=90)
    _, result = _process(services, body.getvalue(), "resize:32x32,avif")
    assert result.headers["content-type"] == "image/avif"
    image = Image.open(io.BytesIO(result.content))
    assert (image.format, image.size) == ("AVIF", (32, 24))

    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "lime", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    task_id, result = _process(services, gif.getvalue(), "resize:20x20")
    animation = Image.open(io.BytesIO(result.content))
    assert (animation.format, animation.size, animation.n_frames) == ("PNG", (20, 15), 3)
    status = requests.get(services.url("master", "/status"), params={"id": task_id}).json()
    assert "animation kept: 3 frames" in status["notes"], "the status says it was kept"


def test_smart_crop_and_watermark_through_the_services(services):
    services.start_all()
    image = Image.new("RGB", (400, 100), (128, 128, 128))
    for x in range(340, 400, 4):  # detail at the right end only
        image.paste((255, 255, 255), (x, 0, x + 2, 100))
    body = io.BytesIO()
    image.save(body, "PNG")
    op = "resize:100x100:smart,watermark:© Ann:top-left:1"
    _, result = _process(services, body.getvalue(), op)
    cropped = Image.open(io.BytesIO(result.content)).convert("RGB")
    assert cropped.size == (100, 100)
    assert cropped.crop((50, 50, 100, 100)).getextrema()[0][1] == 255  # stripes, not the centre
    assert cropped.crop((0, 0, 50, 30)).getextrema()[2][0] < 60  # the text's dark outline
