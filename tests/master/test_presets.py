"""Presets: ``op=preset:NAME`` resolved from the registry by the master, and presets-only mode."""

from __future__ import annotations

import pytest
from falcon import testing

from darkroom.contract.pipeline import InvalidPipeline, PipelineLimits, preset_name
from darkroom.core.config import Config
from darkroom.core.discovery import RegistryClient, ServiceLocator
from darkroom.core.transport import Transport
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.service import open_store
from darkroom.master.app import create_app
from darkroom.master.presets import PipelineResolver
from darkroom.registry.app import create_app as create_registry_app
from darkroom.registry.store import FileKeyValueStore
from support.inprocess import InProcessPool, service_client, storage_by

LIMITS = PipelineLimits(max_image_pixels=Config.max_image_pixels)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(config) -> FileKeyValueStore:
    return FileKeyValueStore(config.data_dir / "registry.json")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def locator(config, registry, clock) -> ServiceLocator:
    """The master's discovery cache, reading a real registry app in-process."""
    transport = Transport()
    transport.mount(
        "registry:9", InProcessPool(create_registry_app(config, registry), "registry:9")
    )
    return ServiceLocator(RegistryClient("registry:9", transport), ttl=5, clock=clock)


def master(config, locator: ServiceLocator, presets_only: bool = False) -> testing.TestClient:
    database = service_client(
        create_database_app(config, open_store(config)), "databaseAddress", "db:1"
    )
    storage = storage_by("api", config)
    resolver = PipelineResolver(locator.value, LIMITS, presets_only=presets_only)
    return testing.TestClient(create_app(config, DatabaseClient(database), storage, resolver))


@pytest.mark.parametrize(
    ("op", "name"),
    [("preset:web", "web"), (" Preset:Web-2_x ", "web-2_x"), ("swap", None), (None, None)],
)
def test_preset_name_is_read_from_a_whole_op(op, name) -> None:
    assert preset_name(op) == name


@pytest.mark.parametrize("op", ["preset", "preset:", "preset:a.b", "preset:" + "a" * 65])
def test_a_preset_name_no_preset_can_have_is_refused(op) -> None:
    with pytest.raises(InvalidPipeline, match="preset name"):
        preset_name(op)


def test_upload_with_a_preset_stores_its_canonical_pipeline(config, registry, locator, png):
    registry.set("preset.web", "THUMBNAIL:64, webp:80,flip")
    client = master(config, locator)
    result = client.simulate_post("/new", params={"op": "preset:web"}, body=png)
    assert result.status_code == 200, result.text
    status = client.simulate_get("/status", params={"id": result.text}).json
    assert status["pipeline"] == "thumbnail:64,flip,webp:80"


def test_a_changed_preset_is_used_once_the_cache_expires(registry, locator, clock):
    resolve = PipelineResolver(locator.value, LIMITS)
    registry.set("preset.web", "flip")
    assert resolve("preset:web") == "flip"
    registry.set("preset.web", "flop")
    assert resolve("preset:web") == "flip"  # cached for the TTL
    clock.now += 6
    assert resolve("preset:web") == "flop"


def test_unknown_and_invalid_presets_are_a_400_naming_them(config, registry, locator, png):
    registry.set("preset.broken", "resize:0x0")
    client = master(config, locator)
    unknown = client.simulate_post("/new", params={"op": "preset:nope"}, body=png)
    assert unknown.status_code == 400
    assert unknown.json["description"] == "unknown preset 'nope': no preset.nope in the registry"
    invalid = client.simulate_post("/new", params={"op": "preset:broken"}, body=png)
    assert invalid.status_code == 400
    assert invalid.json["description"].startswith(
        "preset 'broken' is invalid: step 1 'resize:0x0': width must be"
    )


def test_a_preset_cannot_name_another(registry, locator):
    registry.set("preset.outer", "preset:inner")
    registry.set("preset.inner", "flip")
    with pytest.raises(InvalidPipeline, match=r"preset 'outer' is invalid: .*whole op"):
        PipelineResolver(locator.value, LIMITS)("preset:outer")


@pytest.mark.parametrize("op", ["flip", "", None])
def test_presets_only_refuses_any_other_op(config, registry, locator, png, op):
    client = master(config, locator, presets_only=True)
    params = {} if op is None else {"op": op}
    refused = client.simulate_post("/new", params=params, body=png)
    assert refused.status_code == 400
    assert refused.json["title"] == "Invalid operation"
    assert "presets only: send op=preset:NAME" in refused.json["description"]
    registry.set("preset.web", "flip")
    assert client.simulate_post("/new", params={"op": "preset:web"}, body=png).status_code == 200


def test_without_presets_only_a_plain_op_still_works(config, locator, png):
    client = master(config, locator)
    assert client.simulate_post("/new", params={"op": "flip"}, body=png).status_code == 200
