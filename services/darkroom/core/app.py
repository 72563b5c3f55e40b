"""The app factory every role builds on: one place for middleware, errors and health."""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Iterable
from typing import Any

import falcon
from prometheus_client import CollectorRegistry

from darkroom.contract.errors import ServiceError
from darkroom.core.auth import BEARER_CHALLENGE, AuthMiddleware, parse_api_keys
from darkroom.core.config import Config
from darkroom.core.errors import service_error
from darkroom.core.headers import SecurityHeaders
from darkroom.core.health import Liveness, Readiness, ReadinessCheck
from darkroom.core.logs import AccessLog
from darkroom.core.metrics import MetricsResource, RequestMetrics
from darkroom.core.requestid import RequestIdMiddleware


def create_base_app(
    config: Config,
    readiness: Iterable[ReadinessCheck] = (),
    middleware: Iterable[object] = (),
    challenge: str = BEARER_CHALLENGE,
    registry: CollectorRegistry | None = None,
) -> falcon.App:
    """A ``falcon.App`` with request ids, authentication, health endpoints and error handling."""
    auth = AuthMiddleware(config.internal_token, parse_api_keys(config.api_keys), challenge)
    registry = registry if registry is not None else CollectorRegistry()
    app = falcon.App(
        middleware=[
            SecurityHeaders(),
            RequestIdMiddleware(),
            RequestMetrics(registry),
            AccessLog(),
            auth,
            *middleware,
        ]
    )
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(ServiceError, service_error)
    app.add_error_handler(falcon.HTTPRouteNotFound, _route_not_found)
    app.add_error_handler(falcon.HTTPMethodNotAllowed, _method_not_allowed)
    app.set_error_serializer(json_error)
    # Query strings like ?value= keep their empty values, so "empty" is reported, not "missing".
    app.req_options.keep_blank_qs_values = True
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/healthz", Liveness())
    app.add_route("/readyz", Readiness(list(readiness)))
    app.add_route("/metrics", MetricsResource(registry))
    return app


def _unexpected_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any):
    # Falcon's own handler writes the traceback to stderr as text; this makes it one log line.
    logging.getLogger("darkroom.app").error(
        "unexpected error", exc_info=ex, extra={"method": req.method, "route": req.uri_template}
    )
    raise falcon.HTTPInternalServerError(
        title="Internal server error",
        description="The service failed to answer this request; the reason is in its log.",
    )


def _route_not_found(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any):
    raise falcon.HTTPNotFound(
        title="Not found", description=f"This service has no route {req.path!r}."
    )


def _method_not_allowed(
    req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPMethodNotAllowed, params: Any
):
    allowed = (ex.headers or {}).get("Allow", "")
    raise falcon.HTTPMethodNotAllowed(
        [method.strip() for method in allowed.split(",") if method.strip()],
        title="Method not allowed",
        description=f"{req.method} is not allowed on {req.path}; allowed: {allowed}.",
    )


def json_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every error as JSON ``{"title", "description"}``, whatever the client accepts.

    Falcon's own serializer answers XML, or nothing, to a browser's ``Accept: text/html``.
    """
    document = error.to_dict()
    if not document.get("description"):
        document["description"] = _status_description(error.status_code)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(document).encode()


def _status_description(code: int) -> str:
    try:
        return http.HTTPStatus(code).description + "."
    except ValueError:
        return f"The request failed with status {code}."
