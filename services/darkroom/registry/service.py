"""Running the registry with the backend its configuration names."""

from __future__ import annotations

from darkroom.core.config import Config
from darkroom.core.runtime import require_internal_token
from darkroom.core.server import serve
from darkroom.registry.app import create_app
from darkroom.registry.store import FileKeyValueStore, KeyValueStore


def open_store(config: Config) -> KeyValueStore:
    if config.registry_backend == "configmap":
        from darkroom.registry.configmap import ConfigMapKeyValueStore  # needs `kubernetes`

        store = ConfigMapKeyValueStore.from_config(config)
        store.start()
        return store
    if config.registry_backend == "file":
        return FileKeyValueStore(config.data_dir / "registry.json")
    raise ValueError(
        f"registry_backend must be 'file' or 'configmap', not {config.registry_backend!r}"
    )


def run(config: Config) -> None:
    require_internal_token(config, "registry")
    serve(create_app(config, open_store(config)), config, "registry")
