"""Schemathesis against the live master: whatever a client sends, the master answers without a
server error, and every answer (status, content type, body) is one its OpenAPI document allows.

The document is the one the master serves at ``/openapi.json``; the services are real
processes started by the ``Services`` harness.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from darkroom.master.openapi import document
from support.images import png_bytes
from support.processes import Services, wait_until

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 50
REQUEST_TIMEOUT = 10


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Iterator[Services]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    # Long polls are capped short: a generated wait on a finished job would hold each call.
    # A webhook secret, so that generated webhook URLs are checked (refused: 400 or 422), their
    # names resolved within 2 s at most.
    running = Services(
        root / "data",
        root,
        lease_seconds="5",
        concurrency="1",
        max_wait_seconds="0.2",
        webhook_secret="whsec_" + base64.b64encode(b"fuzzing the webhook check").decode(),
        webhook_timeout_seconds="2",
    )
    try:
        for role in ("registry", "database", "storage", "master", "worker"):
            running.start(role)
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def master_schema(services):
    schema = schemathesis.openapi.from_url(services.url("master", "/openapi.json"))
    schema.config.generation.update(max_examples=MAX_EXAMPLES)
    return schema


schema = schemathesis.pytest.from_fixture("master_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_master_conforms_to_its_openapi_document(case):
    case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)


def test_served_document_is_the_module_document(services):
    served = requests.get(services.url("master", "/openapi.json"), timeout=5)
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    assert served.json() == document()


def test_served_document_needs_no_credentials_even_with_api_keys(tmp_path):
    running = Services(tmp_path / "data", tmp_path, api_keys="k1")
    try:
        running.start("registry")
        running.start("master", wait=False)
        answer = wait_until(
            lambda: _get_or_none(running.url("master", "/openapi.json")), 30, "master answers"
        )
        assert answer.status_code == 200 and answer.json()["openapi"].startswith("3.0")
        protected = requests.get(running.url("master", "/status"), params={"id": "A" * 22})
        assert protected.status_code == 401
    finally:
        running.stop_all()


def test_finished_job_answers_conform(services, master_schema):
    """The success answers fuzzing rarely reaches: a real job, uploaded, finished, downloaded."""
    image = png_bytes((13, 7))
    upload = master_schema["/new"]["POST"].Case(body=image, media_type="image/png")
    task_id = upload.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT).text

    def finished() -> bool:
        answer = requests.get(services.url("master", "/isReady"), params={"id": task_id}, timeout=5)
        return answer.text == "1"

    wait_until(finished, 30, f"job {task_id} finished", interval=0.1)
    for path in ("/isReady", "/status", "/get"):
        case = master_schema[path]["GET"].Case(query={"id": task_id})
        answer = case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)
        assert answer.status_code == 200, (path, answer.text)


def _get_or_none(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2)
    except requests.RequestException:
        return None
