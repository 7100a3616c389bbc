"""The PROXY protocol (v1 and v2) in front of the ingest: the parser on the
specification's formats, and sessions over real sockets whose client
address comes from the header only when the connection is from
ARCHIVA_SMTP_PROXY_FROM."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from ingest.models import Delivery
from ingest.policy import SenderAllowList
from ingest.proxyproto import ProxyHeader, ProxyHeaderError, parse_proxy_header
from ingest.stats import untenanted_rejections
from tests.smtp_support import greet, journal_address, start_ingest, transact

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: admin@contoso.com\r\nSubject: through the balancer\r\n\r\nbody\r\n"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Written out byte by byte from the specification (2.2), not built by the code under test.
V2_TCP4 = (
    SIGNATURE
    + b"\x21"  # version 2, PROXY
    + b"\x11"  # AF_INET, STREAM
    + b"\x00\x0c"  # 12 bytes of addresses
    + b"\x28\x6b\x01\x02"  # 40.107.1.2 (Exchange Online)
    + b"\x0a\x00\x00\x05"  # 10.0.0.5
    + b"\xd4\x31"  # 54321
    + b"\x00\x19"  # 25
)
V2_TCP6_WITH_TLV = (
    SIGNATURE
    + b"\x21\x21"  # version 2, PROXY; AF_INET6, STREAM
    + b"\x00\x2b"  # 36 bytes of addresses and a 7-byte TLV
    + bytes.fromhex("2a01 0111 f403 0000 0000 0000 0000 0001")  # 2a01:111:f403::1
    + bytes.fromhex("fd00 0000 0000 0000 0000 0000 0000 0005")  # fd00::5
    + b"\xd4\x31\x00\x19"
    + b"\x04\x00\x04abcd"  # PP2_TYPE_NOOP with 4 bytes: skipped
)
V2_LOCAL = SIGNATURE + b"\x20\x00\x00\x00"  # version 2, LOCAL: the balancer's own health check


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (b"PROXY TCP4 40.107.1.2 10.0.0.5 54321 25\r\n", "40.107.1.2"),
        (b"PROXY TCP6 2a01:111:f403::1 fd00::5 54321 25\r\n", "2a01:111:f403::1"),
        (b"PROXY TCP6 ::ffff:40.107.1.2 fd00::5 54321 25\r\n", "40.107.1.2"),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
        (V2_TCP4, "40.107.1.2"),
        (V2_TCP6_WITH_TLV, "2a01:111:f403::1"),
        (V2_LOCAL, None),
        (SIGNATURE + b"\x21\x00\x00\x00", None),  # PROXY, AF_UNSPEC: the connection's own address
    ],
)
def test_each_form_of_the_header_gives_the_client_and_its_length(header, client):
    assert parse_proxy_header(header + b"EHLO x\r\n") == ProxyHeader(client, len(header))
    for cut in range(len(header)):  # arriving in pieces: wait for the rest
        assert parse_proxy_header(header[:cut]) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"EHLO outbound.protection.outlook.com\r\n", "no PROXY header"),
        (b"PROXY TCP4 40.107.1.2 10.0.0.5 54321\r\n", "malformed"),
        (b"PROXY TCP5 40.107.1.2 10.0.0.5 54321 25\r\n", "malformed"),
        (b"PROXY TCP4 2a01::1 10.0.0.5 54321 25\r\n", "is not TCP4"),
        (b"PROXY TCP4 40.107.1.256 10.0.0.5 54321 25\r\n", "not an IP address"),
        (b"PROXY TCP4 40.107.1.2 10.0.0.5 65536 25\r\n", "not a port"),
        (b"PROXY TCP4 40.107.1.2 10.0.0.5 +1 25\r\n", "not a port"),
        (b"PROXY TCP4 40.107.1.2 10.0.0.5 54321 25\n", "CRLF"),
        (b"PROXY " + b"x" * 120, "CRLF"),
        (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command"),
        (SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
        (SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "need 12 bytes"),
        (SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "need 36 bytes"),
        (SIGNATURE + b"\x21\x41\x00\x00", "unknown address family"),
    ],
)
def test_a_bad_header_is_refused_naming_the_problem(data, problem):
    with pytest.raises(ProxyHeaderError, match=problem):
        parse_proxy_header(data)


# --- sessions over real sockets ---------------------------------------------------


class BalancedSMTP(smtplib.SMTP):
    """An SMTP client behind a load balancer: the header goes first on the connection."""

    def __init__(self, header: bytes, port: int, then: bytes = b""):
        self.header, self.then = header, then
        super().__init__("127.0.0.1", port, timeout=30)

    def _get_socket(self, host, port, timeout):  # type: ignore[no-untyped-def]  # smtplib's hook
        sock = socket.create_connection((host, port), timeout)
        sock.sendall(self.header + self.then)
        return sock


@pytest.fixture
def balanced(settings, server_factory):
    """Start ingests whose load balancer is on this machine (127.0.0.0/8)."""
    settings.ARCHIVA_SMTP_PROXY_PROTOCOL = True
    settings.ARCHIVA_SMTP_PROXY_FROM = ["127.0.0.0/8"]
    return server_factory


def deliver_through(client: smtplib.SMTP, tls_files, org) -> None:
    assert transact(greet(client, tls_files), [journal_address(org.tenant)], MESSAGE)[0] == 250


@pytest.mark.parametrize("header", [b"PROXY TCP4 40.107.1.2 10.0.0.5 54321 25\r\n", V2_TCP4], ids=["v1", "v2"])
def test_the_headers_client_is_the_peer_the_sender_policy_judges_and_the_envelope_records(
    balanced, tls_files, org, header
):
    """The allow list (Exchange Online only) would refuse 127.0.0.1: the
    session is served because the client in the header is Exchange's."""
    server = balanced(allowlist=SenderAllowList(enabled=True))
    with BalancedSMTP(header, server.port) as client:
        deliver_through(client, tls_files, org)
    assert list(Delivery.objects.values_list("peer_ip", flat=True)) == ["40.107.1.2"]


def test_a_client_outside_the_allow_list_is_refused_by_its_own_address(balanced, tls_files):
    server = balanced(allowlist=SenderAllowList(enabled=True))
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        BalancedSMTP(b"PROXY TCP4 203.0.113.9 10.0.0.5 54321 25\r\n", server.port)
    assert refused.value.smtp_code == 554


def test_bytes_sent_with_the_header_are_the_sessions_first_command(balanced, tls_files, org):
    """A balancer may pass the header and the client's first bytes in one segment."""
    server = balanced()
    with BalancedSMTP(V2_TCP6_WITH_TLV, server.port, then=b"NOOP\r\n") as client:
        assert client.getreply()[0] == 250  # NOOP's reply, after the greeting
        deliver_through(client, tls_files, org)
    assert list(Delivery.objects.values_list("peer_ip", flat=True)) == ["2a01:111:f403::1"]


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", V2_LOCAL], ids=["v1-unknown", "v2-local"])
def test_the_balancers_own_connection_keeps_its_address(balanced, tls_files, org, header):
    server = balanced()
    with BalancedSMTP(header, server.port) as client:
        deliver_through(client, tls_files, org)
    assert list(Delivery.objects.values_list("peer_ip", flat=True)) == ["127.0.0.1"]


def read_until_closed(port: int, send: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if send:
            sock.sendall(send)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def proxy_refusals(reason: str = "proxy_header") -> int:
    """Refusals that named no tenant, as Status → Charts reads them (counts are flushed every few seconds)."""
    since, deadline = timezone.now() - timedelta(hours=1), time.monotonic() + 10
    while not (count := untenanted_rejections(since).get(reason, 0)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def test_a_connection_from_the_balancer_without_a_header_is_closed_without_a_greeting(balanced, caplog):
    server = balanced()
    assert read_until_closed(server.port, b"EHLO outbound.protection.outlook.com\r\n") == b""
    assert read_until_closed(server.port, b"PROXY TCP4 40.107.1.2 10.0.0.5 99999 25\r\n") == b""
    assert proxy_refusals() == 2
    assert "no PROXY header" in caplog.text and "'99999' is not a port number" in caplog.text


def test_a_header_that_does_not_come_is_given_up_after_its_timeout(balanced, monkeypatch):
    monkeypatch.setattr("ingest.smtp.PROXY_HEADER_TIMEOUT", 0.3)
    server = balanced()
    started = time.monotonic()
    assert read_until_closed(server.port, b"") == b""  # nothing sent, nothing said, closed
    assert time.monotonic() - started < 20
    assert proxy_refusals() == 1


def test_connections_waiting_for_their_header_are_capped_as_sessions_are(balanced, tls_files, org):
    """Nobody is admitted before the header, so the session cap alone would let
    connections that never send one pile up."""
    server = balanced(max_sessions=2)
    waiting = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
    try:
        assert read_until_closed(server.port, b"").startswith(b"421 4.3.2 ")  # the third: busy, closed
        waiting[0].sendall(b"PROXY TCP4 40.107.1.2 10.0.0.5 54321 25\r\n")
        assert waiting[0].recv(512).startswith(b"220 ")  # its header came: a session now, a place free
        with BalancedSMTP(V2_TCP4, server.port) as client:
            deliver_through(client, tls_files, org)
    finally:
        for sock in waiting:
            sock.close()
    assert proxy_refusals("over_capacity") == 1


def test_a_header_from_outside_the_balancers_networks_is_not_believed(balanced, settings, tls_files, org):
    """A client that reaches the ingest directly cannot choose the address we see."""
    settings.ARCHIVA_SMTP_PROXY_FROM = ["192.0.2.0/24"]
    server = balanced()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:  # greeted at once: no header expected
        assert client.docmd("PROXY", "TCP4 40.107.1.2 10.0.0.5 54321 25")[0] == 500
        deliver_through(client, tls_files, org)
    assert list(Delivery.objects.values_list("peer_ip", flat=True)) == ["127.0.0.1"]


def test_without_the_setting_a_header_is_an_unknown_command(transactional_db, tls_files, org, outsider):
    server = start_ingest(tls_files)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            assert client.docmd("PROXY", "TCP4 40.107.1.2 10.0.0.5 54321 25")[0] == 500
    finally:
        server.stop_thread()


@pytest.mark.parametrize("loopback_trusted", [True, False], ids=["loopback-is-the-balancer", "loopback-is-not"])
def test_the_images_smtpd_health_check_is_greeted_with_the_proxy_protocol_on(balanced, settings, loopback_trusted):
    """Kubernetes' readiness probe runs `docker-entrypoint.sh healthcheck smtpd`
    in the pod: it must see the 220 whether or not loopback is among the
    balancer's networks."""
    if not loopback_trusted:
        settings.ARCHIVA_SMTP_PROXY_FROM = ["192.0.2.0/24"]
    server = balanced()
    checked = smtpd_health_check(server.port, ARCHIVA_SMTP_PROXY_PROTOCOL="1")
    assert checked.returncode == 0, checked.stderr
    # Without saying it is behind the balancer, the check waits on a trusted port in vain.
    without = smtpd_health_check(server.port)
    assert without.returncode == (1 if loopback_trusted else 0), without.stderr


def smtpd_health_check(port: int, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker-entrypoint.sh"), "healthcheck", "smtpd"],
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ARCHIVA_SMTP_PORT": str(port), **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
