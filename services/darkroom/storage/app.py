"""The storage's HTTP API, as in the seed: ``/sendImage`` and ``/getImage``."""

from __future__ import annotations

import falcon

from darkroom.contract.folders import RESULT_VERSION_PATTERN, Folder
from darkroom.core.app import create_base_app
from darkroom.core.config import Config
from darkroom.core.errors import DISK_FULL_ERRNOS, disk_full
from darkroom.core.ids import require_task_id
from darkroom.core.streams import iter_chunks
from darkroom.storage.store import ImageNotFound, ImageStore, StoredImage, TooLarge


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


def too_large(limit: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(
        title="Image too large", description=f"Images may be at most {limit} bytes."
    )


class Images:
    def __init__(self, store: ImageStore, max_bytes: dict[Folder, int]) -> None:
        self._store = store
        self._max_bytes = max_bytes

    def on_post_send(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id, folder = require_task_id(req), _folder(req)
        limit = self._max_bytes[folder]
        if (req.content_length or 0) > limit:
            raise too_large(limit)
        try:
            self._store.write(
                folder, task_id, iter_chunks(req.bounded_stream), limit, _version(req)
            )
        except TooLarge as exc:
            raise too_large(limit) from exc
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full("storage volume") from exc
            raise
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
        try:
            return self._store.open(folder, task_id, _version(req))
        except ImageNotFound as exc:
            raise falcon.HTTPNotFound(
                title="Unknown image", description=f"No {folder} image for this id."
            ) from exc

    def on_delete_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id, folder = require_task_id(req), _folder(req)
        if not self._store.delete(folder, task_id, _version(req)):
            raise falcon.HTTPNotFound(
                title="Unknown image", description=f"No {folder} image for this id."
            )
        resp.status = falcon.HTTP_204


def create_app(config: Config, store: ImageStore) -> falcon.App:
    app = create_base_app(config)
    limits = {Folder.WORKING: config.max_upload_bytes, Folder.FINISHED: config.max_result_bytes}
    images = Images(store, limits)
    app.add_route("/sendImage", images, suffix="send")
    app.add_route("/getImage", images)
    app.add_route("/deleteImage", images, suffix="delete")
    return app
