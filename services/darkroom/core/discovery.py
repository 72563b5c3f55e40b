"""Finding other services through the registry, and calling them.

How a call goes on the wire (pools, ``Transport.send``) is ``core/transport.py``; the retry
pacing is ``core/backoff.py``.

Addresses are cached briefly and resolved again after a failed call, so a service that moved
is found without restarting anything. Registration retries with backoff while the registry is
down, in the background, so no service crashes or waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from darkroom.contract.errors import ServiceError
from darkroom.core import requestid
from darkroom.core.backoff import Backoff
from darkroom.core.errors import UpstreamUnavailable, raise_for_upstream
from darkroom.core.transport import (
    CallFailed,
    ConnectionFailed,
    Response,
    Seconds,
    TimedOut,
    Transport,
    bearer,
)

log = logging.getLogger(__name__)


# What a failed call to the registry raises: no answer, or an error answer.
REGISTRY_ERRORS = (CallFailed, ServiceError)


class RegistryClient:
    """The registry's own API: ``/get``, ``/set``; failures raise ``REGISTRY_ERRORS``."""

    def __init__(
        self, address: str, transport: Transport, timeout: float = 5.0, token: str = ""
    ) -> None:
        self.address = address
        self._transport = transport
        self._timeout = timeout
        self._headers = bearer(token)

    def get(self, key: str) -> str | None:
        with self._call("GET", "/get", {"key": key}, {}) as response:
            if response.status_code == 404:
                return None
            raise_for_upstream(response, "registry")
            return response.text

    def set(self, key: str, value: str) -> None:
        with self._call("POST", "/set", {"key": key, "value": value}, self._headers) as response:
            raise_for_upstream(response, "registry")

    def _call(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str]
    ) -> Response:
        return self._transport.send(
            method, self.address, path, headers, params=params, timeout=self._timeout
        )


def keep_registered(
    registry: RegistryClient,
    key: str,
    value: str,
    stop: threading.Event,
    refresh_seconds: float = 30.0,
) -> threading.Thread:
    """Register ``key=value`` now and every ``refresh_seconds``; retry while the registry is down.

    Re-asserting keeps the entry right after a registry lost or someone overwrote it.
    """

    def run() -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                if registry.get(key) != value:
                    registry.set(key, value)
                    log.info("registered", extra={"key": key, "value": value})
                backoff.reset()
                stop.wait(refresh_seconds)
            except REGISTRY_ERRORS as exc:
                delay = backoff.next()
                log.warning(
                    "registry unreachable, retrying",
                    extra={"key": key, "error": str(exc), "retry_in": delay},
                )
                stop.wait(delay)

    thread = threading.Thread(target=run, name=f"register-{key}", daemon=True)
    thread.start()
    return thread


class ServiceLocator:
    """Registry values by key (service addresses, presets), cached for ``ttl`` seconds."""

    def __init__(
        self, registry: RegistryClient, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def value(self, key: str) -> str | None:
        """The key's value, None when it is not set; a change is seen within ``ttl``."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached and cached[1] > now:
            return cached[0]
        try:
            value = self._registry.get(key) or None
        except REGISTRY_ERRORS as exc:
            if cached:  # a stale value beats none while the registry restarts
                return cached[0]
            raise UpstreamUnavailable("registry", str(exc)) from exc
        with self._lock:
            self._cache[key] = (value, now + self._ttl)
        return value

    def address(self, key: str) -> str:
        address = self.value(key)
        if not address:
            self.forget(key)  # an unregistered service is asked for again at the next call
            raise UpstreamUnavailable(key.removesuffix("Address"), f"{key} is not registered")
        return address

    def forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)


class ServiceClient:
    """HTTP calls to one service found through the registry, with timeouts and request ids."""

    def __init__(
        self,
        locator: ServiceLocator,
        key: str,
        transport: Transport,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = key.removesuffix("Address")
        self._locator = locator
        self._key = key
        self._transport = transport
        self._timeout = timeout
        self._headers = headers or {}

    @property
    def timeout(self) -> float:
        return self._timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: Seconds = None,
        stream: bool = False,
    ) -> Response:
        """Send a request; on a connection failure resolve the address again and retry once.

        ``timeout`` defaults to the client's. A streamed body cannot be sent twice, so it is
        retried only when it is absent or bytes.
        """
        headers = {**self._headers, **headers} if headers else dict(self._headers)
        if request_id := requestid.current.get():
            headers[requestid.HEADER] = request_id
        timeout = self._timeout if timeout is None else timeout
        replayable = isinstance(data, bytes | str | None)
        for attempt in (1, 2):
            address = self._locator.address(self._key)
            try:
                return self._transport.send(
                    method, address, path, headers, params, data, timeout, stream
                )
            except ConnectionFailed as exc:
                self._locator.forget(self._key)
                if attempt == 2 or not replayable:
                    raise UpstreamUnavailable(self.name, _short(exc)) from exc
            except TimedOut as exc:
                raise UpstreamUnavailable(self.name, "timed out") from exc
        raise AssertionError("unreachable")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
