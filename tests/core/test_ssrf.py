"""The SSRF guard: which URLs and addresses webhooks may go to, and how they are reached."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3

from darkroom.core.ssrf import (
    AddressPolicy,
    BoundedResolver,
    InvalidTarget,
    RefusedTarget,
    checked_addresses,
    parse_networks,
    parse_target,
    post,
)
from support.certificates import self_signed_certificate
from support.receiver import Receiver

POLICY = AddressPolicy.build(deny="10.96.0.0/12 10.244.0.0/16")


def refusal(address: str, policy: AddressPolicy = POLICY) -> str | None:
    return policy.refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.0.0.8", "IETF protocol"),
        ("192.168.1.1", "private"),
        ("198.18.0.1", "benchmarking"),
        ("224.0.0.251", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::7f00:1", "IPv4-compatible"),
        ("100::1", "discard-only"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        # IPv6 that carries an IPv4 address: the IPv4 address decides
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ],
)
def test_every_internal_range_is_refused_and_named(address, kind):
    why = refusal(address)
    article = "an" if kind in ("unspecified", "IPv4-compatible", "IETF protocol") else "a"
    assert why is not None and why.endswith(f", {article} {kind} address")
    assert why.startswith(str(ipaddress.ip_address(address)))


@pytest.mark.parametrize("address", ["10.96.0.1", "10.111.22.3", "10.244.7.8"])
def test_the_cluster_networks_are_refused_by_default(address):
    assert refusal(address) == f"{address}, a private address"
    assert refusal(address, AddressPolicy.build(deny="10.96.0.0/12")) is not None


def test_a_cluster_network_outside_the_private_ranges_is_refused_as_cluster():
    policy = AddressPolicy.build(deny="203.0.113.0/24")
    assert refusal("203.0.113.9", policy) == "203.0.113.9, a cluster address"
    assert refusal("203.0.114.9", policy) is None


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:93.184.215.14",
        "2002:5db8:d70e::1",
    ],
)
def test_public_addresses_pass(address):
    assert refusal(address) is None


def test_allowed_networks_pass_whatever_they_are_and_only_they():
    policy = AddressPolicy.build(allow="127.0.0.0/8, fd00:1::/32")
    assert refusal("127.0.0.1", policy) is None
    assert refusal("::ffff:127.0.0.1", policy) is None  # the same address, mapped
    assert refusal("fd00:1::5", policy) is None
    assert refusal("10.0.0.1", policy) is not None
    assert refusal("::1", policy) is not None  # loopback, but not the allowed network


def test_a_network_list_that_is_not_one_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="DARKROOM_WEBHOOK_ALLOW: 'nonsense'"):
        AddressPolicy.build(allow="127.0.0.0/8 nonsense")
    assert parse_networks(" 10.0.0.0/8,, ::1 ", "X") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "must start with https://"),
        ("http://example.com/", "must start with https://"),
        ("example.com/hook", "must start with https://"),
        ("https:///hook", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "port is not a number from 1 to 65535"),
        ("https://example.com:0/", "port is not a number from 1 to 65535"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\n", "control"),
        ("https://" + "a" * 2000 + ".com/", "1 to 2000"),
        ("", "1 to 2000"),
    ],
)
def test_malformed_urls_are_refused_saying_why(url, message):
    with pytest.raises(InvalidTarget, match=message):
        parse_target(url)


def test_a_url_splits_into_what_a_request_needs():
    target = parse_target("https://Hooks.Example.com/a/b?token=x")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        443,
        "/a/b?token=x",
    )
    assert target.host_header == "hooks.example.com"
    v6 = parse_target("http://[2001:db8::1]:8080", allow_http=True)
    assert (v6.host, v6.port, v6.path, v6.host_header) == (
        "2001:db8::1",
        8080,
        "/",
        "[2001:db8::1]:8080",
    )


def resolver_of(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


def test_a_name_is_checked_by_every_address_it_resolves_to():
    resolve = resolver_of(
        {
            "public.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
            "mixed.example": ["93.184.215.14", "10.0.0.7", "8.8.8.8"],
            "mapped.example": ["::ffff:169.254.169.254"],
            "nothing.example": [],
        }
    )
    public = checked_addresses(parse_target("https://public.example/"), POLICY, resolve)
    assert [str(a) for a in public] == ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    with pytest.raises(RefusedTarget, match=r"mixed.example resolves to 10.0.0.7, a private"):
        checked_addresses(parse_target("https://mixed.example/"), POLICY, resolve)
    with pytest.raises(RefusedTarget, match="link-local"):
        checked_addresses(parse_target("https://mapped.example/"), POLICY, resolve)
    for name in ("nothing.example", "unknown.example"):
        with pytest.raises(RefusedTarget, match="does not resolve"):
            checked_addresses(parse_target(f"https://{name}/"), POLICY, resolve)


def test_ip_literals_in_any_spelling_are_checked_after_resolution():
    # The system resolver turns 127.1 and 2130706433 into 127.0.0.1: a text check would miss them.
    from darkroom.core.ssrf import resolve

    for url in (
        "https://127.1/",
        "https://2130706433/",
        "https://[::ffff:7f00:1]/",
        "https://localhost/",
    ):
        with pytest.raises(RefusedTarget, match="loopback"):
            checked_addresses(parse_target(url), POLICY, resolve)


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(receiver):
    # A name that would resolve elsewhere now (DNS rebinding) is not resolved again: the
    # request goes to the address that was checked, and says the name in Host.
    target = parse_target(f"http://hooks.example:{receiver.port}/in?x=1", allow_http=True)
    addresses = [ipaddress.ip_address("127.0.0.1")]
    status = post(target, addresses, b'{"a":1}', {"Content-Type": "application/json"}, 5)
    assert status == 200
    (request,) = receiver.received
    assert request.path == "/in?x=1"
    assert request.headers["host"] == f"hooks.example:{receiver.port}"
    assert request.body == b'{"a":1}'


def test_a_redirect_is_not_followed(receiver):
    receiver.statuses = [302]
    target = parse_target(receiver.url(), allow_http=True)
    assert post(target, [ipaddress.ip_address("127.0.0.1")], b"{}", {}, 5) == 302
    assert len(receiver.received) == 1


def test_the_next_address_is_tried_when_one_refuses_connections(receiver):
    from harness.launch import free_port

    closed = free_port()  # nobody listens there
    target = parse_target(f"http://x.example:{receiver.port}/", allow_http=True)
    # the same port on two loopback addresses, the first with nothing listening on IPv6
    addresses = [ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")]
    assert post(target, addresses, b"{}", {}, 5) == 200
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        post(
            parse_target(f"http://127.0.0.1:{closed}/", allow_http=True),
            [ipaddress.ip_address("127.0.0.1")],
            b"{}",
            {},
            5,
        )


def test_a_slow_name_server_holds_the_caller_no_longer_than_the_timeout():
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.215.14"]

    resolver = BoundedResolver(stuck, timeout=0.2, workers=1)
    started = time.monotonic()
    with pytest.raises(RefusedTarget, match=r"does not resolve \(no answer within 0.2 s\)"):
        checked_addresses(parse_target("https://slow.example/"), POLICY, resolver)
    assert time.monotonic() - started < 2
    release.set()
    assert resolver("fast.example", 443) == ["93.184.215.14"]


def test_https_to_the_checked_address_sends_the_name_and_checks_the_certificate(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "hooks.example")
    receiver = Receiver(tls=(cert, key))
    try:
        loopback = [ipaddress.ip_address("127.0.0.1")]
        target = parse_target(f"https://hooks.example:{receiver.port}/in")
        assert post(target, loopback, b"{}", {}, 5, ca_certs=str(cert)) == 200
        assert receiver.server_names == ["hooks.example"], "SNI names the host, not the address"
        assert receiver.received[0].headers["host"] == f"hooks.example:{receiver.port}"
        # a certificate for another name, or from an authority not trusted: no request
        other = parse_target(f"https://other.example:{receiver.port}/in")
        with pytest.raises(urllib3.exceptions.SSLError):
            post(other, loopback, b"{}", {}, 5, ca_certs=str(cert))
        with pytest.raises(urllib3.exceptions.SSLError):
            post(target, loopback, b"{}", {}, 5)
        assert len(receiver.received) == 1
    finally:
        receiver.close()


@contextlib.contextmanager
def trickling_receiver(first: bytes, drip: bytes) -> Iterator[tuple[int, threading.Thread]]:
    """A receiver on 127.0.0.1 (its port, its thread) that reads the request, sends ``first``,
    then ``drip`` every 0.05 s, always within the read timeout, never done."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(first)
            while not stop.wait(0.05):
                with contextlib.suppress(OSError):
                    connection.sendall(drip)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], thread
    finally:
        stop.set()
        server.close()


def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_attempts_deadline():
    with trickling_receiver(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a") as (port, _):
        target = parse_target(f"http://slow.example:{port}/", allow_http=True)
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.TimeoutError, match=r"within 0.9 s"):
            post(target, [ipaddress.ip_address("127.0.0.1")], b"{}", {}, timeout=0.3)
        assert time.monotonic() - started < 3


def test_a_tls_handshake_trickled_a_byte_at_a_time_is_cut_within_the_timeout():
    # The handshake happens inside urllib3's connect, before _Deadline knows the connection;
    # CPython's ssl module bounds the whole handshake by the socket's timeout (one deadline
    # over all its reads), so a receiver trickling it cannot hold a delivery slot.
    # After the ClientHello: a handshake record's header announcing 16 KiB, then its body.
    with trickling_receiver(b"\x16\x03\x03\x40\x00", b"\x00") as (port, thread):
        target = parse_target(f"https://slow.example:{port}/")
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            post(target, [ipaddress.ip_address("127.0.0.1")], b"{}", {}, timeout=0.3)
        assert time.monotonic() - started < 1.5
        assert thread.is_alive(), "the receiver was still trickling when the attempt ended"
