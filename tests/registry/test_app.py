from __future__ import annotations

import json

import pytest
from falcon import testing

from darkroom.registry.app import create_app
from darkroom.registry.store import FileKeyValueStore


@pytest.fixture
def store(tmp_path) -> FileKeyValueStore:
    return FileKeyValueStore(tmp_path / "registry.json")


@pytest.fixture
def client(config, store) -> testing.TestClient:
    return testing.TestClient(create_app(config, store))


def test_set_then_get(client):
    assert client.simulate_post("/set", params={"key": "masterAddress", "value": "h:1"}).text == (
        "success"
    )
    result = client.simulate_get("/get", params={"key": "masterAddress"})
    assert result.status_code == 200
    assert result.text == "h:1"


def test_missing_key_is_404(client):
    result = client.simulate_get("/get", params={"key": "nothing"})
    assert result.status_code == 404
    assert "nothing" in result.json["description"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key": "a b", "value": "v"}, "only letters"),
        ({"key": "k" * 254, "value": "v"}, "at most 253"),
        ({"key": "", "value": "v"}, "empty"),
        ({"key": "k", "value": ""}, "empty"),
        ({"key": "k"}, "value"),
        ({"key": "k", "value": "a\nb"}, "printable"),
    ],
)
def test_invalid_entries_are_400_with_reason(client, params, message):
    result = client.simulate_post("/set", params=params)
    assert result.status_code == 400
    assert message in result.json["description"]


def test_set_needs_post(client):
    assert client.simulate_get("/set", params={"key": "k", "value": "v"}).status_code == 405


def test_remove_and_list(client):
    client.simulate_post("/set", params={"key": "b", "value": "2"})
    client.simulate_post("/set", params={"key": "a", "value": "1"})
    assert client.simulate_get("/list").text == "a : 1\nb : 2\n"
    assert client.simulate_delete("/remove", params={"key": "a"}).text == "success"
    assert client.simulate_delete("/remove", params={"key": "a"}).status_code == 404
    assert client.simulate_get("/list", headers={"Accept": "application/json"}).json == {"b": "2"}


def test_store_survives_restart(tmp_path, store):
    store.set("databaseAddress", "127.0.0.1:3001")
    reopened = FileKeyValueStore(tmp_path / "registry.json")
    assert reopened.get("databaseAddress") == "127.0.0.1:3001"
    assert json.loads((tmp_path / "registry.json").read_text()) == {
        "databaseAddress": "127.0.0.1:3001"
    }
    assert not list(tmp_path.glob(".registry-*")), "no temporary file left behind"


def test_health(client):
    assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/readyz").json == {"status": "ready"}


@pytest.mark.parametrize(
    "value",
    ["nohost", "host:", ":3000", "host:0", "host:65536", "host:30a", "a b:1", "http://h:1"],
)
def test_address_values_must_be_host_port(client, value):
    result = client.simulate_post("/set", params={"key": "masterAddress", "value": value})
    assert result.status_code == 400
    assert "host:port" in result.json["description"]


@pytest.mark.parametrize(
    "value", ["127.0.0.1:3003", "darkroom-master:3003", "[::1]:3003", "a.b.svc.cluster.local:1"]
)
def test_valid_addresses(client, value):
    result = client.simulate_post("/set", params={"key": "masterAddress", "value": value})
    assert result.status_code == 200
