"""Headers every answer of every role carries, errors included."""

from __future__ import annotations

import falcon

# Browsers must not guess a type from the bytes: an uploaded "image" could be run as a page.
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"),)


class SecurityHeaders:
    """Sets ``SECURITY_HEADERS`` on every response (run after error handlers, so errors too)."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        for name, value in SECURITY_HEADERS:
            resp.set_header(name, value)
