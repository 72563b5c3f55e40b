"""The registry's HTTP API, as in the seed: ``/get``, ``/set``, ``/remove``, ``/list``."""

from __future__ import annotations

from types import MappingProxyType

import falcon

from darkroom.core.app import create_base_app
from darkroom.core.auth import INTERNAL, PUBLIC
from darkroom.core.config import Config
from darkroom.registry.store import (
    InvalidEntry,
    KeyValueStore,
    StoreFull,
    StoreUnavailable,
    validate_key,
    validate_value,
)


def _key(req: falcon.Request) -> str:
    key = req.get_param("key", required=True)
    try:
        validate_key(key)
    except InvalidEntry as exc:
        raise falcon.HTTPBadRequest(title="Invalid key", description=str(exc)) from exc
    return key


class Entry:
    # Anyone may look an address up; only services holding the token may change one.
    auth = MappingProxyType({"GET": PUBLIC, "POST": INTERNAL, "DELETE": INTERNAL})
    # Look-ups come with every address resolution: their access lines are DEBUG.
    quiet_methods = ("GET",)

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = _key(req)
        value = self._store.get(key)
        if value is None:
            raise falcon.HTTPNotFound(title="Unknown key", description=f"No value for key {key!r}.")
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = value

    def on_post_set(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = _key(req)
        value = req.get_param("value", required=True)
        try:
            validate_value(value, key)
            self._store.set(key, value)
        except InvalidEntry as exc:
            raise falcon.HTTPBadRequest(title="Invalid value", description=str(exc)) from exc
        except StoreUnavailable as exc:
            raise falcon.HTTPServiceUnavailable(
                title="Registry unavailable", description=str(exc), retry_after=1
            ) from exc
        except StoreFull as exc:
            raise falcon.HTTPContentTooLarge(title="Registry full", description=str(exc)) from exc
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "success"

    def on_delete_remove(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = _key(req)
        if not self._store.remove(key):
            raise falcon.HTTPNotFound(title="Unknown key", description=f"No value for key {key!r}.")
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "success"


class Listing:
    auth = PUBLIC

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = sorted(self._store.items().items())
        if req.client_accepts_json and not req.client_accepts("text/plain"):
            resp.media = dict(items)
            return
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "".join(f"{key} : {value}\n" for key, value in items)


def create_app(config: Config, store: KeyValueStore) -> falcon.App:
    app = create_base_app(config, readiness=[store.problem])
    entry = Entry(store)
    app.add_route("/get", entry)
    app.add_route("/set", entry, suffix="set")
    app.add_route("/remove", entry, suffix="remove")
    app.add_route("/list", Listing(store))
    return app
