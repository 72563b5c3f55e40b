"""The storage's HTTP API, as in the seed: ``/sendImage`` and ``/getImage``."""

from __future__ import annotations

import falcon

from darkroom.contract.folders import RESULT_VERSION_PATTERN, Folder
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.ids import require_task_id
from darkroom.core.imagefiles import (
    ImageStore,
    StoredImage,
    folder_limits,
    open_image,
    store_image,
    unknown_image,
)
from darkroom.core.streams import iter_chunks


def _folder(req: falcon.Request) -> Folder:
    state = req.get_param("state", required=True)
    try:
        return Folder(state)
    except ValueError as exc:
        raise falcon.HTTPBadRequest(
            title="Invalid state", description="Parameter 'state' must be 'working' or 'finished'."
        ) from exc


def _version(req: falcon.Request) -> str | None:
    version = req.get_param("version")
    if version is not None and not RESULT_VERSION_PATTERN.fullmatch(version):
        raise falcon.HTTPBadRequest(
            title="Invalid version", description="Parameter 'version' must be 32 hex digits."
        )
    return version


class Images:
    """The images volume over HTTP; its errors (404, 413, 507) are the ``ServiceError``s of
    ``core.imagefiles``, answered by the base app's one handler."""

    def __init__(self, store: ImageStore, max_bytes: dict[Folder, int]) -> None:
        self._store = store
        self._max_bytes = max_bytes

    def on_post_send(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id, folder = require_task_id(req), _folder(req)
        chunks = iter_chunks(req.bounded_stream)
        version, size = _version(req), req.content_length
        store_image(self._store, self._max_bytes, folder, task_id, chunks, version, size)
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "success"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        image = self._open(req)
        resp.content_type = image.media_type
        resp.set_stream(image.stream, image.size)

    def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        image = self._open(req)
        image.stream.close()
        resp.content_type = image.media_type
        resp.content_length = image.size

    def _open(self, req: falcon.Request) -> StoredImage:
        task_id, folder = require_task_id(req), _folder(req)
        return open_image(self._store, folder, task_id, _version(req))

    def on_delete_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id, folder = require_task_id(req), _folder(req)
        if not self._store.delete(folder, task_id, _version(req)):
            raise unknown_image(folder)
        resp.status = falcon.HTTP_204


def create_app(config: Config, store: ImageStore) -> falcon.App:
    app = create_base_app(config)
    images = Images(store, folder_limits(config))
    app.add_route("/sendImage", images, suffix="send")
    app.add_route("/getImage", images)
    app.add_route("/deleteImage", images, suffix="delete")
    return app
