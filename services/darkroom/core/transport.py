"""How service calls go on the wire: sessions with their connection pools, and ``send``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import requests


def new_session(pool_size: int = 32) -> requests.Session:
    """A session with a connection pool large enough for every server thread."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.trust_env = False  # never route service-to-service calls through a proxy
    # Only what the services read: each header line costs the receiving waitress parse time.
    session.headers = requests.structures.CaseInsensitiveDict({"User-Agent": "darkroom"})
    return session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def send(
    session: requests.Session,
    method: str,
    url: str,
    headers: dict[str, str],
    params: dict[str, Any] | None = None,
    data: Any = None,
    timeout: float | tuple[float, float] | None = None,
    stream: bool = False,
) -> requests.Response:
    """``session.request`` through the session's adapter, without its per-call merging.

    Service calls use no cookies, redirects, hooks, proxies or environment settings; skipping
    them (and requests' URL re-parsing) halves the client's CPU per call (docs/benchmarks.md).
    """
    if params:
        query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        url = f"{url}?{query}" if query else url
    prepared = requests.PreparedRequest()
    prepared.method = method.upper()
    prepared.url = url
    prepared.headers = requests.structures.CaseInsensitiveDict({**session.headers, **headers})
    prepared.prepare_body(data, None)
    if "Content-Length" in headers:
        # A streamed body of known length goes as it is: chunked framing costs both ends CPU.
        prepared.headers.pop("Transfer-Encoding", None)
    response = session.get_adapter(url).send(prepared, stream=stream, timeout=timeout)
    if not stream:
        response.content  # noqa: B018 -- read now, so the connection goes back to the pool
    return response
