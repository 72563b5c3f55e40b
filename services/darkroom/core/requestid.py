"""Request ids: taken from ``X-Request-ID`` or made, and passed on to every downstream call."""

from __future__ import annotations

import contextlib
import contextvars
import re
import secrets

import falcon

HEADER = "X-Request-ID"
_VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    return secrets.token_hex(8)


class RequestIdMiddleware:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(HEADER) or ""
        request_id = given if _VALID.fullmatch(given) else new_request_id()
        req.context.request_id = request_id
        req.context.request_id_token = current.set(request_id)
        resp.set_header(HEADER, request_id)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        # Log lines the thread writes after this request must not carry its id.
        token = getattr(req.context, "request_id_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # set in another context: nothing to undo
                current.reset(token)
