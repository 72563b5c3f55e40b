"""Odd images through the real services (issue 14): BigTIFF accepted at upload, a skipped PNG
chunk said in /status, 16-bit colour kept in the downloaded PNG, a broken file's reason."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from support.jobs import download, upload
from support.pngfiles import GREY, RGB, png
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e


def settled(services: Services, task_id: str) -> dict:
    def done() -> dict | None:
        url = services.url("master", "/status")
        task = requests.get(url, params={"id": task_id}, timeout=10).json()
        return task if task["stateName"] in ("finished", "failed") else None

    return wait_until(done, 30, f"task {task_id} to settle")


def test_odd_images_through_the_services(services):
    services.start_all()
    bigtiff = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 20, 30)).save(bigtiff, "TIFF", big_tiff=True)
    unreadable_iccp = (b"iCCP", b"profile\x00\x05not a zlib stream")
    deep = [[1000, 2000, 3000, 65535, 1, 300]]
    ids = {
        "bigtiff": upload(services, bigtiff.getvalue()),
        "iccp": upload(services, png([[0, 50, 100, 250]], 8, GREY, [unreadable_iccp])),
        "deep": upload(services, png(deep, 16, RGB)),
        "broken": upload(services, png([[1, 2]], 8, GREY)[:-30]),
    }
    tasks = {name: settled(services, task_id) for name, task_id in ids.items()}
    assert tasks["bigtiff"]["stateName"] == "finished"
    assert Image.open(io.BytesIO(download(services, ids["bigtiff"]))).getpixel((0, 0)) == (
        20,
        10,
        30,
    )
    assert tasks["iccp"]["stateName"] == "finished"
    assert "skipped the unreadable optional iCCP chunk" in tasks["iccp"]["error"]
    assert tasks["deep"]["stateName"] == "finished"
    result = download(services, ids["deep"])
    assert result[24] == 16  # the IHDR's bit depth
    assert tasks["broken"]["stateName"] == "failed"
    assert "PNG file" in tasks["broken"]["error"]
