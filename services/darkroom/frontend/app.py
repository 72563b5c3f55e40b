"""The frontend's routes: the seed's form routes, the page, and a JSON status for it."""

from __future__ import annotations

from importlib import resources
from typing import Any

import falcon

from darkroom.core.app import create_base_app
from darkroom.core.auth import BASIC_CHALLENGE, CLIENT, PUBLIC
from darkroom.core.config import Config
from darkroom.core.errors import raise_for_upstream
from darkroom.core.ids import require_task_id
from darkroom.core.relay import relay, relay_stream
from darkroom.core.streams import iter_chunks
from darkroom.master.client import MasterClient

STATIC = resources.files("darkroom.frontend") / "static"
STATIC_TYPES = {
    ".html": falcon.MEDIA_HTML,
    ".js": falcon.MEDIA_JS,
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page loads only its own files: no inline script or style, no other origin.
# blob: shows the chosen file before it is uploaded.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
UPLOAD_FIELD = "uploadfile"


class Page:
    # Asking for the key here lets the browser prompt once and send it on every fetch.
    auth = CLIENT

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = (STATIC / "index.html").read_text()
        resp.set_header("Content-Security-Policy", PAGE_POLICY)
        resp.set_header("X-Content-Type-Options", "nosniff")


class StaticFile:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        file = STATIC / name
        if suffix not in STATIC_TYPES or "/" in name or not file.is_file():
            raise falcon.HTTPNotFound(title="Not found", description=f"No static file {name!r}.")
        resp.content_type = STATIC_TYPES[suffix]
        resp.text = file.read_text()
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Content-Type-Options", "nosniff")


class Jobs:
    auth = CLIENT

    def __init__(self, master: MasterClient) -> None:
        self._master = master.service

    def on_post_submit(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The seed's form post: streams the ``uploadfile`` part to the master, answers the id."""
        if req.content_type is None or not req.content_type.startswith("multipart/form-data"):
            raise falcon.HTTPUnsupportedMediaType(
                title="Expected a form upload",
                description=f"POST multipart/form-data with the image in field {UPLOAD_FIELD!r}.",
            )
        part = self._file_part(req.get_media())
        params = {"op": op} if (op := req.get_param("op")) else {}
        upstream = self._master.request(
            "POST", "/new", params=params, data=iter_chunks(part.stream)
        )
        relay(upstream, resp, "master")

    @staticmethod
    def _file_part(form: Any) -> Any:
        for part in form:
            if part.name == UPLOAD_FIELD:
                return part
        raise falcon.HTTPBadRequest(
            title="No image", description=f"The form has no file field {UPLOAD_FIELD!r}."
        )

    def on_get_is_ready(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        with self._master.request("GET", "/isReady", params={"id": task_id}) as upstream:
            raise_for_upstream(upstream, "master")
            ready = upstream.text.strip() == "1"
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Your image is ready." if ready else "Your image is not ready yet."

    def on_get_status(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        relay(self._master.request("GET", "/status", params={"id": task_id}), resp, "master")

    def on_get_image(self, req: falcon.Request, resp: falcon.Response) -> None:
        task_id = require_task_id(req)
        upstream = self._master.request("GET", "/get", params={"id": task_id}, stream=True)
        if upstream.status_code >= 400:
            with upstream:
                raise_for_upstream(upstream, "master")
        relay_stream(upstream, resp)
        if disposition := upstream.headers.get("Content-Disposition"):
            resp.set_header("Content-Disposition", disposition)


def create_app(config: Config, master: MasterClient, readiness: list | None = None) -> falcon.App:
    app = create_base_app(config, readiness=readiness or [], challenge=BASIC_CHALLENGE)
    jobs = Jobs(master)
    app.add_route("/", Page())
    app.add_route("/static/{name}", StaticFile())
    app.add_route("/submitTask", jobs, suffix="submit")
    app.add_route("/isReady", jobs, suffix="is_ready")
    app.add_route("/status", jobs, suffix="status")
    app.add_route("/getImage", jobs, suffix="image")
    return app
