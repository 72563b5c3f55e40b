"""Calling Falcon apps in-process through a real ``requests.Session``.

Unit tests of one role then use the real clients of the roles it calls, wired to those roles'
real apps, with no sockets and no monkeypatching.
"""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import falcon
import requests
from falcon import testing

from darkroom.core.discovery import RegistryClient, ServiceClient, ServiceLocator


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
