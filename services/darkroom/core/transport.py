"""How service calls go on the wire: urllib3 connection pools, one per address, and ``send``.

Service calls use no cookies, redirects, proxies, retries, content decoding or environment
settings, so they go straight to urllib3's pools: requests' sessions cost the calling side
0.47 ms of CPU per call, urllib3's pool about 0.25 (docs/benchmarks.md), on ~13 calls a job.
A failed call is raised as ``ConnectionFailed`` or ``TimedOut``; ``ServiceClient``
(``core/discovery.py``) turns both into the contract's errors.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError

Body = bytes | str | Iterable[bytes] | BinaryIO | None
Seconds = float | tuple[float, float] | None  # one for both, or (connect, read); None: no limit

# Only what the services read: each header line costs the receiving waitress parse time.
# "identity" (http.client's own default) because bodies are never decoded here.
BASE_HEADERS = {"User-Agent": "darkroom", "Accept-Encoding": "identity"}
# One failure is the caller's to handle (ServiceClient resolves the address again and retries
# once); redirects are never followed: services do not send them.
NO_RETRIES = urllib3.Retry(total=False, redirect=False, raise_on_status=False)
STREAM_CHUNK_BYTES = 256 * 1024


class CallFailed(Exception):
    """A call got no answer. The message says why, then names the call (its URL may carry a
    lease: whoever logs it redacts it, ``core.errors.redact_secrets``)."""


class ConnectionFailed(CallFailed):
    """No connection, or it broke before the answer came (the address may have moved)."""


class TimedOut(CallFailed):
    """The service took longer than the timeout to answer."""


class ErrorAnswer(Exception):
    """An error answer (status 400 and up): the cause of the ``ServiceError`` raised for it."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status_code} {response.reason}")
        self.response = response


class Response:
    """A service's answer: ``status_code``, ``headers``, and the body, whole (``content``,
    ``text``, ``json()``) or streamed (``stream``). ``close`` (or leaving ``with``) gives the
    connection back to its pool, or drops it when the body was not read to its end."""

    __slots__ = ("_content", "_raw", "headers", "status_code")

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.headers = raw.headers
        self._content: bytes | None = None

    @property
    def reason(self) -> str:
        return self._raw.reason or ""

    @property
    def content(self) -> bytes:
        """The whole body (read now if the response is streamed)."""
        if self._content is None:
            self._content = self._raw.data
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)

    def stream(self, chunk_bytes: int | None = STREAM_CHUNK_BYTES) -> Iterator[bytes]:
        """The body as it arrives, in chunks of up to ``chunk_bytes``, never decoded."""
        return self._raw.stream(chunk_bytes, decode_content=False)

    def close(self) -> None:
        if not self._raw.closed:  # read short: the connection cannot carry another call
            self._raw.close()
        self._raw.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=128)
def timeout_of(seconds: Seconds) -> urllib3.Timeout:
    """urllib3's timeout for ``seconds``, made once per value."""
    if isinstance(seconds, tuple):
        return urllib3.Timeout(connect=seconds[0], read=seconds[1])
    return urllib3.Timeout(connect=seconds, read=seconds)


class Transport:
    """Connection pools to the services, one per ``host:port``, shared by a role's clients.

    ``pool_size`` connections per address are kept for reuse (more may be open at once and
    are closed when returned): enough for every server thread of the calling role.
    """

    def __init__(self, pool_size: int = 32) -> None:
        self._pool_size = pool_size
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def pool(self, address: str) -> urllib3.HTTPConnectionPool:
        pool = self._pools.get(address)
        if pool is None:
            with self._lock:
                pool = self._pools.get(address)
                if pool is None:
                    pool = self._pools[address] = self._new_pool(address)
        return pool

    def mount(self, address: str, pool: urllib3.HTTPConnectionPool) -> None:
        """Reach ``address`` through ``pool`` (the tests' in-process apps)."""
        with self._lock:
            self._pools[address] = pool

    def _new_pool(self, address: str) -> urllib3.HTTPConnectionPool:
        url = urllib3.util.parse_url(f"http://{address}")
        return urllib3.HTTPConnectionPool(url.host, url.port, maxsize=self._pool_size)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def send(
        self,
        method: str,
        address: str,
        path: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        data: Body = None,
        timeout: Seconds = None,
        stream: bool = False,
    ) -> Response:
        """One call to ``http://{address}{path}``; the body is read whole unless ``stream``.

        ``params`` with the value None are left out. A streamed ``data`` goes with chunked
        framing unless ``headers`` give its Content-Length. Raises ``ConnectionFailed`` or
        ``TimedOut`` when there is no answer.
        """
        target = with_query(path, params)
        try:
            raw = self.pool(address).urlopen(
                method,
                target,
                body=data,
                headers={**BASE_HEADERS, **headers},
                retries=NO_RETRIES,
                redirect=False,
                assert_same_host=False,
                timeout=timeout_of(timeout),
                preload_content=not stream,
                decode_content=False,
            )
        except ReadTimeoutError as exc:
            raise TimedOut(f"{exc} ({method} http://{address}{target})") from exc
        except (ConnectTimeoutError, ProtocolError) as exc:  # NewConnectionError included
            raise ConnectionFailed(f"{exc} ({method} http://{address}{target})") from exc
        return Response(raw)


def with_query(path: str, params: Mapping[str, Any] | None) -> str:
    """``path`` with ``params`` (lists as repeated parameters, None values left out)."""
    if not params:
        return path
    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    return f"{path}?{query}" if query else path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
