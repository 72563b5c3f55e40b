"""Reaching the storage (used by the master and the worker): through its HTTP API
(``StorageClient``), or on its volume itself where the role mounts it too (``VolumeStorage``).

Both raise the storage's answers as ``darkroom.contract.errors`` types (404, 413, 507 alike).
``version`` names one of a task's results (``contract.folders.result_version``); without it,
the task's one image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from darkroom.contract.errors import ServiceNotFound
from darkroom.contract.folders import Folder
from darkroom.core.config import Config
from darkroom.core.discovery import ServiceClient
from darkroom.core.errors import raise_for_upstream
from darkroom.core.imagefiles import (
    FileAnswer,
    FileImageStore,
    ImageAnswer,
    ImageStore,
    folder_limits,
    open_image,
    store_image,
)
from darkroom.core.transport import Response


class Storage(Protocol):
    """What the master and the worker do with the storage's images."""

    def send(
        self,
        folder: Folder,
        task_id: str,
        body: Iterable[bytes] | bytes,
        size: int | None = None,
        version: str | None = None,
    ) -> None: ...

    def open(self, folder: Folder, task_id: str, version: str | None = None) -> ImageAnswer: ...

    def exists(self, folder: Folder, task_id: str, version: str | None = None) -> bool: ...

    def delete(self, folder: Folder, task_id: str, version: str | None = None) -> bool: ...


def _params(folder: Folder, task_id: str, version: str | None) -> dict[str, Any]:
    params = {"id": task_id, "state": str(folder)}
    if version is not None:
        params["version"] = version
    return params


class StorageClient:
    """The storage service's HTTP API."""

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


class VolumeStorage:
    """The storage's volume, mounted by this role too: the same files, limits and answers as
    through the storage service, without the two HTTP exchanges (and the copies through two
    sockets) each image costs that way. The storage role still sweeps old images."""

    def __init__(self, store: ImageStore, limits: dict[Folder, int]) -> None:
        self._store, self._limits = store, limits

    def send(
        self,
        folder: Folder,
        task_id: str,
        body: Iterable[bytes] | bytes,
        size: int | None = None,
        version: str | None = None,
    ) -> None:
        chunks = iter([body] if isinstance(body, bytes) else body)
        store_image(self._store, self._limits, folder, task_id, chunks, version, size)

    def open(self, folder: Folder, task_id: str, version: str | None = None) -> FileAnswer:
        return FileAnswer(open_image(self._store, folder, task_id, version))

    def exists(self, folder: Folder, task_id: str, version: str | None = None) -> bool:
        try:
            self.open(folder, task_id, version).close()
        except ServiceNotFound:
            return False
        return True

    def delete(self, folder: Folder, task_id: str, version: str | None = None) -> bool:
        return self._store.delete(folder, task_id, version)


def storage_for(config: Config, service: ServiceClient) -> Storage:
    """On the volume when this role mounts it (``storage_volume``), else through ``service``.

    A volume that is not there, or not this role's to write, stops the role at its start with
    the reason (ValueError: a configuration error): a folder made in its place would hold
    uploads that no worker sees.
    """
    if not config.storage_volume:
        return StorageClient(service)
    root = Path(config.storage_volume)
    advice = "mount the storage's volume there, or set it empty to reach the storage's API"
    if not root.is_dir():
        raise ValueError(f"DARKROOM_STORAGE_VOLUME={root}: no such directory; {advice}")
    try:
        store = FileImageStore(root, remove_leftovers=False)  # the storage's to do
    except OSError as exc:
        raise ValueError(
            f"DARKROOM_STORAGE_VOLUME={root}: cannot be used ({exc}); {advice}"
        ) from exc
    return VolumeStorage(store, folder_limits(config))
