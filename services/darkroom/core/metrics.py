"""Prometheus metrics every role shares: its requests and their latency, and ``GET /metrics``.

Every app has its own ``CollectorRegistry`` (``create_base_app`` makes one unless given one), so
several apps in one process (tests) never clash, and ``GET /metrics`` serves that registry.

Every role counts ``darkroom_http_requests_total{method,route,status}`` and times
``darkroom_http_request_duration_seconds{method,route}``. Every label value comes from a fixed
set, whatever a client sends, so no request can grow the label set (and the process's memory and
the scrape) without bound: ``method`` is one of ``METHODS`` or ``other``, ``route`` is the route
template (``/getImage``) or ``(unrouted)``, never the raw path, and ``status`` is a status code.

Each role's own figures live with the role: ``darkroom.database.metrics``,
``darkroom.worker.metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric

from darkroom.core.auth import PUBLIC

UNROUTED = "(unrouted)"
# The methods counted under their own name; any other (made up by a client) counts as OTHER.
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
OTHER_METHOD = "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class MetricsResource:
    """``GET /metrics``: the registry in the Prometheus text format."""

    auth = PUBLIC

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._registry)


class RequestMetrics:
    """Middleware: counts answered requests and times them, by route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "darkroom_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "darkroom_http_request_duration_seconds",
            "Time from request to response headers, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        started = getattr(req.context, "metrics_started", None)
        count, latency = self._series(method_label(req.method), route_label(req), resp.status_code)
        count.inc()
        if started is not None:
            latency.observe(time.perf_counter() - started)

    def _series(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The counter and histogram children of these labels, looked up once per label set.

        ``labels()`` validates, converts and locks on every call; the label sets are few (see
        the module's docstring), so the children are kept here, keyed by the label values.
        """
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            # two threads may both get here: labels() gives both the same children
            count = self._requests.labels(method, route, str(status))
            series = self._children[key] = count, self._latency.labels(method, route)
        return series


def method_label(method: str) -> str:
    """``method`` if it is a standard HTTP method, else ``other``: clients choose the name."""
    return method if method in METHODS else OTHER_METHOD


def route_label(req: falcon.Request) -> str:
    """The template of the route that matched (one of the app's own), else ``(unrouted)``."""
    return req.uri_template or UNROUTED
