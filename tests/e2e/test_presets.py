"""Presets over real processes: set in the registry, run by ``op=preset:NAME``, changed live."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from PIL import Image, ImageOps

from darkroom.submit import submit
from support.images import decode, png_bytes, same_pixels
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e


def set_preset(services: Services, name: str, pipeline: str) -> None:
    token = services.env["DARKROOM_INTERNAL_TOKEN"]
    response = requests.post(
        services.url("registry", "/set"),
        params={"key": f"preset.{name}", "value": pipeline},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def run(services: Services, image: bytes, op: str) -> tuple[dict, bytes]:
    """Upload with ``op``, wait for the job, and return its /status and its result."""
    task_id = requests.post(
        services.url("master", "/new"), data=image, params={"op": op}, timeout=10
    ).text

    def finished() -> dict | None:
        task = requests.get(services.url("master", "/status"), params={"id": task_id}, timeout=10)
        return task.json() if task.json().get("stateName") == "finished" else None

    task = wait_until(finished, 30, f"task {task_id} to finish")
    result = requests.get(services.url("master", "/get"), params={"id": task_id}, timeout=10)
    return task, result.content


def test_a_preset_runs_and_a_change_is_used_by_the_next_upload(services, tmp_path: Path):
    services.start_all()
    image = png_bytes((24, 16), "RGB", seed=3)
    set_preset(services, "look", "flip")
    task, result = run(services, image, "preset:look")
    assert task["pipeline"] == "flip"
    assert same_pixels(decode(result), ImageOps.flip(decode(image)))

    set_preset(services, "look", "FLOP,grayscale")
    # the master's discovery cache (DISCOVERY_TTL_SECONDS=1 here) lets the change through soon
    task = wait_until(
        lambda: (t := run(services, image, "preset:look")[0])["pipeline"] != "flip" and t,
        20,
        "the changed preset to be used",
    )
    assert task["pipeline"] == "flop,grayscale"

    # darkroom submit passes the op through
    path = tmp_path / "in.png"
    path.write_bytes(image)
    out = tmp_path / "out.png"
    master = services.url("master").removeprefix("http://")
    assert submit(path, out, master, "preset:look", timeout=30, progress=False) == 0
    expected = ImageOps.grayscale(ImageOps.mirror(decode(image)))
    assert same_pixels(Image.open(out), expected)

    unknown = requests.post(
        services.url("master", "/new"), data=image, params={"op": "preset:nope"}, timeout=10
    )
    assert unknown.status_code == 400
    assert "unknown preset 'nope'" in unknown.json()["description"]


def test_presets_only_refuses_a_plain_op(services):
    services.start_all()
    services.stop("master")
    services.start("master", presets_only="1")
    image = png_bytes((8, 8), "RGB")
    refused = requests.post(
        services.url("master", "/new"), data=image, params={"op": "flip"}, timeout=10
    )
    assert refused.status_code == 400
    assert "presets only" in refused.json()["description"]
    set_preset(services, "small", "thumbnail:4")
    task, result = run(services, image, "preset:small")
    assert task["pipeline"] == "thumbnail:4"
    assert decode(result).size == (4, 4)
