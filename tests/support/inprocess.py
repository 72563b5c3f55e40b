"""Calling Falcon apps in-process through a real ``requests.Session``.

Unit tests of one role then use the real clients of the roles it calls, wired to those roles'
real apps, with no sockets and no monkeypatching.
"""

from __future__ import annotations

import dataclasses
import io
from urllib.parse import urlsplit

import falcon
import requests
from falcon import testing

from darkroom.core.config import Config
from darkroom.core.discovery import RegistryClient, ServiceClient, ServiceLocator
from darkroom.database.app import create_app as create_database_app
from darkroom.database.client import DatabaseClient
from darkroom.database.store import LeasePolicy, SqliteTaskStore
from darkroom.master.app import create_app as create_master_app
from darkroom.master.client import MasterClient
from darkroom.storage.app import create_app as create_storage_app
from darkroom.storage.client import StorageClient
from darkroom.storage.store import FileImageStore


class WsgiAdapter(requests.adapters.BaseAdapter):
    def __init__(self, app: falcon.App) -> None:
        super().__init__()
        self._client = testing.TestClient(app)

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        url = urlsplit(request.url)
        body = request.body
        if body is not None and not isinstance(body, bytes | str):
            body = b"".join(body)  # a streamed upload
        result = self._client.simulate_request(
            request.method,
            url.path,
            query_string=url.query,
            headers=dict(request.headers),
            body=body,
        )
        response = requests.Response()
        response.status_code = result.status_code
        response.headers = requests.structures.CaseInsensitiveDict(result.headers)
        response.raw = io.BytesIO(result.content)
        response.url = request.url
        response.request = request
        response.reason = result.status.split(" ", 1)[1] if " " in result.status else ""
        return response

    def close(self) -> None:
        pass


class StaticRegistry(RegistryClient):
    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = addresses

    def get(self, key: str) -> str | None:
        return self._addresses.get(key)


def service_client(app: falcon.App, key: str, host: str) -> ServiceClient:
    """A real ServiceClient whose requests reach ``app`` in-process at ``host``."""
    session = requests.Session()
    session.mount(f"http://{host}/", WsgiAdapter(app))
    locator = ServiceLocator(StaticRegistry({key: host}), ttl=60)
    return ServiceClient(locator, key, session, timeout=5)


@dataclasses.dataclass(frozen=True)
class MasterSide:
    """The master app over real database and storage apps: what a worker talks to."""

    tasks: SqliteTaskStore
    storage: StorageClient
    master_app: falcon.App
    master: MasterClient


def master_side(config: Config, tasks: SqliteTaskStore | None = None) -> MasterSide:
    """Database, storage and master apps in-process, each reaching the next by its real client.

    ``tasks`` is the database's store; by default a new one in ``config.data_dir``.
    """
    if tasks is None:
        tasks = SqliteTaskStore(config.data_dir / "tasks.sqlite3", LeasePolicy(lease_seconds=5))
    database = service_client(create_database_app(config, tasks), "databaseAddress", "db:1")
    storage_app = create_storage_app(config, FileImageStore(config.data_dir))
    storage = StorageClient(service_client(storage_app, "storageAddress", "storage:2"))
    master_app = create_master_app(
        config, DatabaseClient(database), storage, check_pipeline=lambda text: text or "swap"
    )
    master = MasterClient(service_client(master_app, "masterAddress", "master:3"))
    return MasterSide(tasks, storage, master_app, master)
