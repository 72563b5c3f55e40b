from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from falcon import testing

from darkroom.core.config import Config
from darkroom.database.app import create_app as create_database_app
from darkroom.database.service import open_store
from darkroom.frontend.app import create_app as create_frontend_app
from darkroom.master.app import create_app as create_master_app
from darkroom.registry.app import create_app as create_registry_app
from darkroom.registry.store import FileKeyValueStore

# Requests in these tests stop at authentication or validation, before any backend call.
UNUSED = SimpleNamespace(get=None)
TOKEN = "service-token-0123456789"
KEY = "client-key-abc"


@pytest.fixture
def secured(tmp_path) -> Config:
    return Config(data_dir=tmp_path, internal_token=TOKEN, api_keys=f"{KEY}, other-key")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_internal_routes_need_the_token(secured):
    client = testing.TestClient(create_database_app(secured, open_store(secured)))
    missing = client.simulate_post("/newTask")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.simulate_post("/newTask", headers=bearer("guess"))
    assert wrong.status_code == 403
    assert "guess" not in wrong.text and TOKEN not in wrong.text
    assert client.simulate_post("/newTask", headers=bearer(TOKEN)).status_code == 201
    assert client.simulate_post("/newTask", headers=bearer(KEY)).status_code == 403


def test_health_is_public(secured):
    client = testing.TestClient(create_database_app(secured, open_store(secured)))
    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/readyz").status_code == 200


def test_registry_reads_are_public_writes_are_not(secured):
    client = testing.TestClient(
        create_registry_app(secured, FileKeyValueStore(secured.data_dir / "r.json"))
    )
    params = {"key": "masterAddress", "value": "evil:1"}
    assert client.simulate_post("/set", params=params).status_code == 401
    assert client.simulate_delete("/remove", params={"key": "x"}).status_code == 401
    assert client.simulate_post("/set", params=params, headers=bearer(TOKEN)).status_code == 200
    assert client.simulate_get("/get", params={"key": "masterAddress"}).text == "evil:1"
    assert client.simulate_get("/list").status_code == 200


def client_api(config: Config) -> testing.TestClient:
    return testing.TestClient(
        create_master_app(config, database=UNUSED, storage=UNUSED, check_pipeline=str)
    )


def test_client_api_open_without_keys(tmp_path):
    client = client_api(Config(data_dir=tmp_path, internal_token=TOKEN))
    # Gets past authentication to the id check.
    assert client.simulate_get("/status", params={"id": "1"}).status_code == 400
    assert client.simulate_post("/getNewTask").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [bearer(KEY), {"X-API-Key": "other-key"}, bearer(TOKEN)],
)
def test_client_api_accepts_keys_and_the_service_token(secured, headers):
    client = client_api(secured)
    assert client.simulate_get("/status", params={"id": "1"}, headers=headers).status_code == 400


def test_client_api_refuses_without_or_with_wrong_key(secured):
    client = client_api(secured)
    assert client.simulate_get("/isReady", params={"id": "1"}).status_code == 401
    wrong = client.simulate_get("/isReady", params={"id": "1"}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 403
    assert client.simulate_post("/cancel", params={"id": "1"}).status_code == 401
    keyed = client.simulate_post("/cancel", params={"id": "1"}, headers=bearer(KEY))
    assert keyed.status_code == 400, "past authentication to the id check"


def test_frontend_asks_browsers_for_basic_auth(secured):
    client = testing.TestClient(
        create_frontend_app(secured, master=SimpleNamespace(service=UNUSED))
    )
    page = client.simulate_get("/")
    assert page.status_code == 401
    assert page.headers["www-authenticate"].startswith("Basic")
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    assert client.simulate_get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.simulate_get("/static/app.js").status_code == 200
    assert client.simulate_get("/", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_config_repr_hides_secrets(secured):
    assert TOKEN not in repr(secured) and KEY not in repr(secured)
