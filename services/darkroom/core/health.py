"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from darkroom.core.auth import PUBLIC

# A readiness check returns None when ready, or the reason it is not.
ReadinessCheck = Callable[[], str | None]


class Liveness:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readiness:
    auth = PUBLIC

    def __init__(self, checks: list[ReadinessCheck]) -> None:
        self._checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problems = [problem for check in self._checks if (problem := check())]
        if problems:
            raise falcon.HTTPServiceUnavailable(
                title="Not ready", description="; ".join(problems), retry_after=1
            )
        resp.media = {"status": "ready"}
