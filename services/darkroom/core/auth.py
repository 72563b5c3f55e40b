"""Who may call what: one middleware reads each resource's ``auth`` level.

Levels: ``public`` (anyone), ``client`` (API keys, when any are configured) and ``internal``
(the shared service token, when one is configured; the default). A resource may give one level
for all methods or a dict by HTTP method. Secrets are compared in constant time and never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Collection, Mapping

import falcon

PUBLIC, CLIENT, INTERNAL = "public", "client", "internal"
BEARER_CHALLENGE = 'Bearer realm="darkroom"'
BASIC_CHALLENGE = 'Basic realm="darkroom", charset="UTF-8"'


def _matches(given: str, secrets: Collection[bytes]) -> bool:
    # Compare against every secret so the time taken does not tell which one nearly matched.
    presented = given.encode()
    results = [hmac.compare_digest(presented, secret) for secret in secrets]
    return any(results)


def presented_secret(req: falcon.Request) -> str | None:
    """The credential in ``Authorization: Bearer``, ``Basic`` (its password) or ``X-API-Key``."""
    if api_key := req.get_header("X-API-Key"):
        return api_key
    header = req.get_header("Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return None


class AuthMiddleware:
    def __init__(
        self, internal_token: str, api_keys: Collection[str], challenge: str = BEARER_CHALLENGE
    ) -> None:
        # encoded once here, not on every request
        self._internal = [internal_token.encode()] if internal_token else []
        self._api_keys = [*(key.encode() for key in api_keys), *self._internal]
        self._client_protected = bool(api_keys)
        self._challenge = challenge

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if resource is None or req.method == "OPTIONS":
            return
        level = _level(resource, req.method)
        if level == PUBLIC:
            return
        if level == CLIENT:
            if self._client_protected:
                self._check(req, self._api_keys, "an API key")
            return
        if self._internal:
            self._check(req, self._internal, "the internal service token")

    def _check(self, req: falcon.Request, accepted: list[bytes], what: str) -> None:
        secret = presented_secret(req)
        if not secret:
            raise falcon.HTTPUnauthorized(
                title="Authentication required",
                description=f"This route needs {what} (Authorization: Bearer ...).",
                challenges=[self._challenge],
            )
        if not _matches(secret, accepted):
            raise falcon.HTTPForbidden(
                title="Not allowed", description=f"The credentials given are not {what}."
            )


def _level(resource: object, method: str) -> str:
    level = getattr(resource, "auth", INTERNAL)
    if type(level) is not str and isinstance(level, Mapping):  # str: most routes, no ABC check
        return level.get(method, INTERNAL)
    return level


def parse_api_keys(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]
