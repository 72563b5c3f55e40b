"""The app factory every role builds on: one place for middleware, errors and health."""

from __future__ import annotations

from collections.abc import Iterable

import falcon

from darkroom.core.auth import BEARER_CHALLENGE, AuthMiddleware, parse_api_keys
from darkroom.core.config import Config
from darkroom.core.health import Liveness, Readiness, ReadinessCheck
from darkroom.core.requestid import RequestIdMiddleware


def create_base_app(
    config: Config,
    readiness: Iterable[ReadinessCheck] = (),
    middleware: Iterable[object] = (),
    challenge: str = BEARER_CHALLENGE,
) -> falcon.App:
    """A ``falcon.App`` with request ids, authentication, health endpoints and error handling."""
    auth = AuthMiddleware(config.internal_token, parse_api_keys(config.api_keys), challenge)
    app = falcon.App(middleware=[RequestIdMiddleware(), auth, *middleware])
    # Query strings like ?value= keep their empty values, so "empty" is reported, not "missing".
    app.req_options.keep_blank_qs_values = True
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/healthz", Liveness())
    app.add_route("/readyz", Readiness(list(readiness)))
    return app
