"""Calling Falcon apps in-process through a real ``Transport``.

Unit tests of one role then use the real clients of the roles it calls, wired to those roles'
real apps, with no sockets and no monkeypatching.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import falcon
import urllib3
from falcon import testing

from darkroom.core.config import Config
from darkroom.core.discovery import RegistryClient, ServiceClient, ServiceLocator
from darkroom.core.imagefiles import FileImageStore, ImageStore, folder_limits
from darkroom.core.transport import Transport
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.store import LeasePolicy, SqliteTaskStore
from darkroom.master.app import create_app as create_master_app
from darkroom.master.client import MasterClient
from darkroom.storage.app import create_app as create_storage_app
from darkroom.storage.client import Storage, StorageClient, VolumeStorage


class _Body(io.BytesIO):
    """An answer's body that closes itself once read to its end, as a socket's does."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data:
            self.close()
        return data


class InProcessPool(urllib3.HTTPConnectionPool):
    """A connection pool whose calls reach ``app`` through falcon.testing, not a socket."""

    def __init__(self, app: falcon.App, address: str) -> None:
        url = urllib3.util.parse_url(f"http://{address}")
        super().__init__(url.host, url.port)
        self._client = testing.TestClient(app)

    def urlopen(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Any = None,
        preload_content: bool = True,
        **_: Any,
    ) -> urllib3.HTTPResponse:
        path, _, query = url.partition("?")
        if hasattr(body, "read"):
            body = body.read()
        elif body is not None and not isinstance(body, bytes | str):
            body = b"".join(body)  # a streamed upload
        result = self._client.simulate_request(
            method, path, query_string=query, headers=dict(headers or {}), body=body
        )
        return urllib3.HTTPResponse(
            body=_Body(result.content),
            headers=dict(result.headers),
            status=result.status_code,
            reason=result.status.split(" ", 1)[1] if " " in result.status else "",
            preload_content=preload_content,
            decode_content=False,
        )


class StaticRegistry(RegistryClient):
    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = addresses

    def get(self, key: str) -> str | None:
        return self._addresses.get(key)


def service_client(app: falcon.App, key: str, host: str) -> ServiceClient:
    """A real ServiceClient whose requests reach ``app`` in-process at ``host``."""
    transport = Transport()
    transport.mount(host, InProcessPool(app, host))
    locator = ServiceLocator(StaticRegistry({key: host}), ttl=60)
    return ServiceClient(locator, key, transport, timeout=5)


@dataclasses.dataclass(frozen=True)
class MasterSide:
    """The master app over real database and storage apps: what a worker talks to."""

    tasks: SqliteTaskStore
    storage: StorageClient
    master_app: falcon.App
    master: MasterClient


# How a master or worker reaches the storage's images: its API, or its volume (darkroom up).
STORAGE_ACCESS = ("api", "volume")


def storage_by(access: str, config: Config, images: ImageStore | None = None) -> Storage:
    """The storage over ``images`` (by default the store in ``config.data_dir``), reached
    through its real app (``api``) or on the volume (``volume``)."""
    images = images if images is not None else FileImageStore(config.data_dir)
    if access == "volume":
        return VolumeStorage(images, folder_limits(config))
    app = create_storage_app(config, images)
    return StorageClient(service_client(app, "storageAddress", "storage:2"))


def master_side(config: Config, tasks: SqliteTaskStore | None = None) -> MasterSide:
    """Database, storage and master apps in-process, each reaching the next by its real client.

    ``tasks`` is the database's store; by default a new one in ``config.data_dir``.
    """
    if tasks is None:
        tasks = SqliteTaskStore(config.data_dir / "tasks.sqlite3", LeasePolicy(lease_seconds=5))
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage = storage_by("api", config)
    master_app = create_master_app(
        config, DatabaseClient(database), storage, check_pipeline=lambda text: text or "swap"
    )
    master = MasterClient(service_client(master_app, "masterAddress", "master:3"))
    return MasterSide(tasks, storage, master_app, master)
