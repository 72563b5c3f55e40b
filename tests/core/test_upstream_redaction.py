"""A service that cannot be reached: the public answer names it, the log keeps the detail."""

from __future__ import annotations

import logging

import falcon
import pytest
from falcon import testing

from darkroom.core.app import create_base_app
from darkroom.core.discovery import ServiceClient, ServiceLocator
from darkroom.core.errors import UpstreamUnavailable, redact_secrets
from darkroom.core.transport import Transport
from harness.launch import HOST, free_port
from support.inprocess import StaticRegistry

LEASE = "the-lease-token-of-a-worker"


class Heartbeat:
    """Calls a database that is not there, as the master does for a worker's heartbeat."""

    def __init__(self, database: ServiceClient) -> None:
        self._database = database

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._database.request("POST", "/heartbeat", params={"id": "abc", "lease": LEASE})


@pytest.fixture
def client(config) -> testing.TestClient:
    address = f"{HOST}:{free_port()}"  # nothing listens there
    locator = ServiceLocator(StaticRegistry({"databaseAddress": address}), ttl=60)
    database = ServiceClient(locator, "databaseAddress", Transport(), timeout=2)
    app = create_base_app(config)
    app.add_route("/heartbeat", Heartbeat(database))
    return testing.TestClient(app)


def test_public_503_names_the_service_not_its_address_or_url(client, caplog):
    with caplog.at_level(logging.WARNING, logger="darkroom.app"):
        result = client.simulate_post("/heartbeat")
    assert result.status_code == 503
    assert result.json == {
        "title": "Service unavailable",
        # The kind is said (requests' longer message had it cut off by the 200-character cap).
        "description": "The database service is not reachable (connection refused).",
    }
    assert HOST not in result.text and LEASE not in result.text
    [record] = [r for r in caplog.records if r.getMessage() == "service unavailable"]
    assert HOST in record.error and "/heartbeat" in record.error  # the operator's detail
    assert "lease=[redacted]" in record.error and LEASE not in record.error


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("HTTPConnectionPool(host='10.0.0.7', port=3001): Read timed out.", "timed out"),
        ("timed out", "timed out"),
        ("[Errno 111] Connection refused", "connection refused"),
        ("masterAddress is not registered", "masterAddress is not registered"),
        ("('Connection aborted.', RemoteDisconnected('closed'))", "connection lost"),
        ("Failed to resolve 'darkroom-database.svc'", "address not found"),
        ("something nobody foresaw at /data/tasks.sqlite3", "connection failed"),
    ],
)
def test_failure_kinds_carry_no_address(reason, kind):
    error = UpstreamUnavailable("storage", reason)
    assert error.description == f"The storage service is not reachable ({kind})."


def test_secret_query_parameters_are_redacted():
    text = "url: /failTask?id=a&lease=abc-123&error=x /x?token=t0k&api_key=k"
    assert redact_secrets(text) == (
        "url: /failTask?id=a&lease=[redacted]&error=x /x?token=[redacted]&api_key=[redacted]"
    )
