"""The metadata report over real processes: /status says what of a photo's metadata was dropped."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import ExifTags, Image

from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    b' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    b' xmlns:dc="http://purl.org/dc/elements/1.1/" dc:source="where I live"/></rdf:RDF>'
    b"</x:xmpmeta>"
)


def private_photo() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: 52.5}
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.BodySerialNumber: "SN-12345"}
    out = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 100, 50)).save(out, "JPEG", exif=exif, xmp=XMP)
    return out.getvalue()


def finished(services: Services, image: bytes, op: str) -> tuple[dict, bytes]:
    new = requests.post(services.url("master", "/new"), data=image, params={"op": op}, timeout=10)
    assert new.status_code == 200, new.text

    def done() -> dict | None:
        url = services.url("master", "/status")
        task = requests.get(url, params={"id": new.text}, timeout=10).json()
        return task if task["stateName"] in ("finished", "failed") else None

    task = wait_until(done, 30, f"task {new.text} to settle")
    assert task["stateName"] == "finished", task
    result = requests.get(services.url("master", "/get"), params={"id": new.text}, timeout=10)
    return task, result.content


def test_status_names_the_metadata_removed_and_none_with_keep_metadata(services):
    services.start_all()
    photo = private_photo()
    task, result = finished(services, photo, "jpeg")
    report = "metadata removed: EXIF (GPS position, camera serial number), XMP"
    assert task["notes"] == [report]
    assert task["error"] == report  # the notes joined, as before the notes field
    assert b"SN-12345" not in result and b"where I live" not in result

    task, result = finished(services, photo, "jpeg,keep-metadata")
    assert task["notes"] == [] and not task["error"], task  # nothing removed
    assert b"SN-12345" in result and b"where I live" in result
