"""Calling the storage service (used by the master and the worker).

Error answers are raised as ``darkroom.contract.errors`` types. ``version`` names one of a
task's results (``contract.folders.result_version``); without it, the task's one image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from darkroom.contract.errors import ServiceNotFound
from darkroom.contract.folders import Folder
from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream
from darkroom.core.transport import Response


def _params(folder: Folder, task_id: str, version: str | None) -> dict[str, Any]:
    params = {"id": task_id, "state": str(folder)}
    if version is not None:
        params["version"] = version
    return params


class StorageClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    def send(
        self,
        folder: Folder,
        task_id: str,
        body: Iterable[bytes] | bytes,
        size: int | None = None,
        version: str | None = None,
    ) -> None:
        """Store an image; ``size``, when known, is sent as Content-Length (no chunked framing)."""
        headers = {} if size is None else {"Content-Length": str(size)}
        response = self._service.request(
            "POST",
            "/sendImage",
            params=_params(folder, task_id, version),
            data=body,
            headers=headers,
        )
        with response:
            raise_for_upstream(response, "storage")

    def open(self, folder: Folder, task_id: str, version: str | None = None) -> Response:
        """The image as a streaming response (close it); ServiceNotFound if there is none."""
        response = self._service.request(
            "GET", "/getImage", params=_params(folder, task_id, version), stream=True
        )
        if response.status_code >= 400:
            with response:
                raise_for_upstream(response, "storage")
        return response

    def exists(self, folder: Folder, task_id: str, version: str | None = None) -> bool:
        response = self._service.request(
            "HEAD", "/getImage", params=_params(folder, task_id, version)
        )
        return self._found(response)

    def delete(self, folder: Folder, task_id: str, version: str | None = None) -> bool:
        response = self._service.request(
            "DELETE", "/deleteImage", params=_params(folder, task_id, version)
        )
        return self._found(response)

    @staticmethod
    def _found(response: Response) -> bool:
        with response:
            try:
                raise_for_upstream(response, "storage")
            except ServiceNotFound:
                return False
            return True
