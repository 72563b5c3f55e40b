"""Calling the storage service (used by the master and the worker).

Error answers are raised as ``darkroom.contract.errors`` types.
"""

from __future__ import annotations

from collections.abc import Iterable

import requests

from darkroom.contract.errors import ServiceNotFound
from darkroom.contract.folders import Folder
from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream


class StorageClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    def send(
        self, folder: Folder, task_id: str, body: Iterable[bytes] | bytes, size: int | None = None
    ) -> None:
        """Store an image; ``size``, when known, is sent as Content-Length (no chunked framing)."""
        headers = {} if size is None else {"Content-Length": str(size)}
        response = self._service.request(
            "POST",
            "/sendImage",
            params={"id": task_id, "state": str(folder)},
            data=body,
            headers=headers,
        )
        with response:
            raise_for_upstream(response, "storage")

    def open(self, folder: Folder, task_id: str) -> requests.Response:
        """The image as a streaming response (close it); ServiceNotFound if there is none."""
        response = self._service.request(
            "GET", "/getImage", params={"id": task_id, "state": str(folder)}, stream=True
        )
        if response.status_code >= 400:
            with response:
                raise_for_upstream(response, "storage")
        return response

    def delete(self, folder: Folder, task_id: str) -> bool:
        response = self._service.request(
            "DELETE", "/deleteImage", params={"id": task_id, "state": str(folder)}
        )
        with response:
            try:
                raise_for_upstream(response, "storage")
            except ServiceNotFound:
                return False
            return True
