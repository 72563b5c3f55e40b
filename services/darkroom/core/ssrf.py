"""Requests to URLs users give (webhooks), kept off the cluster's own network (SSRF guard).

A URL is checked as text (scheme, host, no credentials), then its host is resolved and every
address it resolves to is checked against the refused networks; the request then goes to a
checked address itself, with the host name kept for the Host header, TLS's SNI and the
certificate check, so nothing is resolved twice (DNS rebinding finds nothing to change).
Redirects are not followed, timeouts bound the connection, the TLS handshake as a whole (CPython's
ssl module waits for it against one deadline), each read and the whole attempt, and only a few
bytes of the answer are read: its status is all that counts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

import requests.certs
import urllib3

from darkroom.contract.webhooks import MAX_WEBHOOK_URL_CHARS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, in the order to try them.
Resolver = Callable[[str, int], list[str]]

# Networks no webhook goes to unless DARKROOM_WEBHOOK_ALLOW lists them: what is not the public
# internet (RFC 6890's special-purpose registries), each with the name errors give it. The
# first match names an address, so the narrower networks come first.
SPECIAL_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # cloud metadata services live here
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # and 255.255.255.255, the broadcast address
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible"),  # deprecated; none is a public address
    ("100::/64", "discard-only"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
# IPv6 addresses that carry an IPv4 address, which is checked as well (and allowed as well).
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
# Addresses of one name tried in turn when a connection fails, at most this many.
MAX_ADDRESSES_TRIED = 4
# Bytes of a receiver's answer read before the connection is closed.
MAX_ANSWER_BYTES = 4096
# An attempt as a whole may take this many timeouts (connect, send, answer), then it is cut.
ATTEMPT_TIMEOUTS = 3
# Errors after which the next address of the name is tried: nothing was sent.
_CONNECTION_FAILED = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)


class TargetError(ValueError):
    """A URL that is not sent to; the message says why, worded for the user."""


class InvalidTarget(TargetError):
    """The URL itself is wrong: not http(s), no host, credentials in it, too long."""


class RefusedTarget(TargetError):
    """The URL is well formed, but its host does not resolve or resolves to a refused address."""


def parse_networks(text: str, setting: str) -> tuple[IPNetwork, ...]:
    """A comma- or space-separated CIDR list (``10.0.0.0/8, fd00::/8``); ValueError naming
    ``setting`` for an entry that is not one."""
    networks = []
    for entry in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"{setting}: {entry!r} is not a network: {exc}") from None
    return tuple(networks)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in _MAPPED or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIXTOFOUR:
        return address.sixtofour
    return None


@dataclasses.dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a request may go to: none of ``refused`` unless it is in ``allowed``."""

    refused: tuple[tuple[IPNetwork, str], ...]
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, deny: str = "", allow: str = "") -> AddressPolicy:
        """The special-purpose networks, plus ``deny`` (the cluster's pod and service networks,
        named so in errors), minus ``allow``: both CIDR lists (``DARKROOM_WEBHOOK_DENY``,
        ``DARKROOM_WEBHOOK_ALLOW``)."""
        special = [(ipaddress.ip_network(cidr), name) for cidr, name in SPECIAL_NETWORKS]
        cluster = [(net, "cluster") for net in parse_networks(deny, "DARKROOM_WEBHOOK_DENY")]
        return cls(tuple(special + cluster), parse_networks(allow, "DARKROOM_WEBHOOK_ALLOW"))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused (``10.1.2.3, a private address``), None when it is not."""
        candidates = [address]
        if (inner := _embedded_ipv4(address)) is not None:
            candidates.append(inner)
        if any(_within(c, net) for c in candidates for net in self.allowed):
            return None
        for candidate in candidates:
            for network, name in self.refused:
                if _within(candidate, network):
                    shown = address if candidate == address else f"{address} ({candidate})"
                    return f"{shown}, {_with_article(name)} address"
        return None


def _with_article(name: str) -> str:
    """``an unspecified``, ``a unique-local``: the article as the name is spoken."""
    spoken_with_a_vowel = name[0] in "aeiouAEIOU" and not name.startswith("uni")
    return f"{'an' if spoken_with_a_vowel else 'a'} {name}"


def _within(address: IPAddress, network: IPNetwork) -> bool:
    return address.version == network.version and address in network


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked URL, split into what a request to one of its addresses needs."""

    url: str
    scheme: str
    host: str  # a name, or an IP address without brackets
    port: int
    path: str  # path and query: the request target

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str, allow_http: bool = False) -> Target:
    """``url`` as a Target, or InvalidTarget saying what is wrong with it."""
    if not 0 < len(url) <= MAX_WEBHOOK_URL_CHARS:
        raise InvalidTarget(f"The URL must be 1 to {MAX_WEBHOOK_URL_CHARS} characters.")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise InvalidTarget("The URL has spaces or control characters; percent-encode them.")
    parts = urllib.parse.urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        allowed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise InvalidTarget(f"The URL must start with {allowed}.")
    if parts.username is not None or parts.password is not None:
        raise InvalidTarget("The URL must not carry credentials; the signature proves the sender.")
    if parts.fragment:
        raise InvalidTarget("The URL must not have a fragment (#...).")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # nothing listens on port 0: every attempt would fail, for a day
        raise InvalidTarget("The URL's port is not a number from 1 to 65535.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidTarget("The URL has no host.")
    if ":" not in host:  # a name (or IPv4): in the ASCII form DNS knows
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidTarget("The URL's host is not a valid name.") from None
    scheme = parts.scheme.lower()
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), path)


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, each once, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


class BoundedResolver:
    """``resolver`` with a deadline: ``getaddrinfo`` has none, and a slow name server would hold
    the request thread that asked for as long as it liked. A lookup past ``timeout`` goes on in
    one of ``workers`` threads of its own while the caller gets an OSError."""

    def __init__(
        self, resolver: Resolver = resolve, timeout: float = 5.0, workers: int = 8
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "resolver")

    def __call__(self, host: str, port: int) -> list[str]:
        future = self._pool.submit(self._resolver, host, port)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OSError(f"no answer within {self._timeout:g} s") from None


def checked_addresses(target: Target, policy: AddressPolicy, resolver: Resolver) -> list[IPAddress]:
    """Every address ``target``'s host resolves to; RefusedTarget when it resolves to none, or
    to any refused one (a name with one private address among public ones is refused too:
    which of them a request reaches is not ours to choose)."""
    try:
        found = resolver(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise RefusedTarget(f"The URL's host {target.host} does not resolve ({exc}).") from exc
    if not found:
        raise RefusedTarget(f"The URL's host {target.host} does not resolve.")
    addresses = [ipaddress.ip_address(address) for address in found]
    for address in addresses:
        if (why := policy.refusal(address)) is not None:
            raise RefusedTarget(
                f"The URL's host {target.host} resolves to {why}: webhooks are not sent to"
                " internal networks (DARKROOM_WEBHOOK_ALLOW lists networks allowed anyway)."
            )
    return addresses


def post(
    target: Target,
    addresses: Iterable[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    ca_certs: str | None = None,
) -> int:
    """POST ``body`` to ``target`` at the first of ``addresses`` that takes a connection; the
    answer's status. Raises urllib3's errors (``urllib3.exceptions.HTTPError``).

    ``ca_certs``: the certificate authorities trusted (default: requests' bundle, certifi's).
    """
    last_error: Exception | None = None
    for address in list(addresses)[:MAX_ADDRESSES_TRIED]:
        try:
            return _post_to(target, address, body, headers, timeout, ca_certs)
        except _CONNECTION_FAILED as exc:
            last_error = exc
    assert last_error is not None, "post() needs at least one address"
    raise last_error


def _post_to(
    target: Target,
    address: IPAddress,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    ca_certs: str | None,
) -> int:
    timeouts = urllib3.Timeout(connect=timeout, read=timeout)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            timeout=timeouts,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or requests.certs.where(),
            server_hostname=target.host,  # SNI: the name, while connecting to the address
            assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            str(address), target.port, timeout=timeouts, retries=False
        )
    with pool, _Deadline(pool, ATTEMPT_TIMEOUTS * timeout) as deadline:
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers={**headers, "Host": target.host_header},
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
            )
        finally:
            # A cut answer may look whole (headers end at the end of the stream): it is not.
            deadline.raise_if_expired()
        # The status is the answer; its body is read a little, so the connection ends cleanly.
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            response.read(MAX_ANSWER_BYTES)
        response.close()
        return response.status


class _Deadline:
    """Cuts an attempt's connection when its time is up: read timeouts alone let a receiver
    that trickles its answer a byte at a time hold the attempt (and a delivery slot) for hours.

    The pool's connections are made of a subclass that registers each once it is connected;
    shutting its socket down ends the read in progress.
    """

    def __init__(self, pool: urllib3.HTTPConnectionPool, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._connections: list[urllib3.connection.HTTPConnection] = []
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        connections = self._connections

        class Registered(pool.ConnectionCls):  # type: ignore[name-defined, misc]
            def connect(self) -> None:
                super().connect()
                connections.append(self)

        pool.ConnectionCls = Registered

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def raise_if_expired(self) -> None:
        if self.expired:
            raise urllib3.exceptions.TimeoutError(f"no whole answer within {self.seconds:g} s")

    def _cut(self) -> None:
        self.expired = True
        for connection in self._connections:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
