"""Issue 16 on the SMTP protocol: control characters, per-peer caps, deadlines,
the allow-list at connect, and RFC 5321's source routes and MAIL parameters,
over real sockets against a real ingest."""

from __future__ import annotations

import io
import smtplib
import socket
import time

import pytest
from django.core.management import call_command

from ingest.models import Delivery
from ingest.policy import SenderAllowList
from tests.smtp_support import connect, journal_address, start_ingest

MESSAGE = b"From: a@contoso.com\r\nSubject: hardening\r\n\r\nbody\r\n"
OTHER_PEER = "127.0.0.2"  # a second source address on the loopback network


@pytest.fixture
def server_factory(transactional_db, tls_files, org, outsider):
    started = []

    def make(timeout: int | None = None, **policy):
        server = start_ingest(tls_files, policy=policy, timeout=timeout)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop_thread()


def open_raw(server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def greeting(sock: socket.socket) -> bytes:
    return sock.recv(1024)


def trickle_until_closed(sock: socket.socket, data: bytes, pause: float) -> bytes:
    """Send `data` a byte at a time, `pause` seconds apart, until the server
    answers; then read until it hangs up.  Returns what it said ("" if it
    never did, once every byte was sent)."""
    sock.settimeout(pause)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break  # already closed: what it said is waiting to be read
        try:
            answer = sock.recv(1024)
        except TimeoutError:
            continue
        sock.settimeout(10)
        try:
            while chunk := sock.recv(1024):
                answer += chunk
        except ConnectionResetError:
            pass  # a byte sent after its close: what it said was read already
        return answer
    return b""


# --- point 2: control characters --------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<a\x00b@contoso.com>",
        b"RCPT TO:<journal-\x01x@archive.archiva.com>",
        b"EHLO out\x7fbound.example",
        b"NOOP \x1b[2J",
        b"MAIL FROM:<ndr@contoso.com>\rRCPT TO:<x@y>",
    ],
    ids=["nul-in-mail", "soh-in-rcpt", "del-in-ehlo", "escape-in-noop", "bare-cr"],
)
def test_a_command_line_with_control_characters_gets_501_and_the_session_goes_on(
    server_factory, tls_files, org, command
):
    server = server_factory()
    address = journal_address(org.tenant)
    with connect(server, tls_files) as client:
        client.send(command + b"\r\n")
        code, reply = client.getreply()
        assert code == 501 and reply.startswith(b"5.5.2"), reply
        assert client.mail("ndr@contoso.com")[0] == 250
        assert client.rcpt(address)[0] == 250
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
    [row] = Delivery.objects.all()
    assert row.mail_from == "ndr@contoso.com" and row.rcpt_to == [address]


def test_a_nul_in_the_sender_never_reaches_the_committer(server_factory, tls_files, org):
    server = server_factory()
    with connect(server, tls_files) as client:
        client.send(b"MAIL FROM:<a\x00b@contoso.com>\r\n")
        assert client.getreply()[0] == 501
        # No envelope was started: RCPT still needs MAIL.
        assert client.rcpt(journal_address(org.tenant))[0] == 503
    assert Delivery.objects.count() == 0


# --- point 3: per-peer sessions, the allow-list at connect, deadlines -------


def test_one_peer_at_its_session_cap_gets_421_470_while_another_peer_is_served(server_factory, tls_files, org):
    server = server_factory(max_sessions_per_peer=3)
    held = [open_raw(server) for _ in range(3)]
    try:
        assert [greeting(sock)[:4] for sock in held] == [b"220 "] * 3
        extra = open_raw(server)
        refused = greeting(extra)
        assert refused.startswith(b"421 4.7.0 "), refused
        assert extra.recv(1024) == b""  # and hung up on
        extra.close()
        # Another peer is served in full while the first holds its cap.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10, source_address=(OTHER_PEER, 0)) as other:
            other.ehlo("other.example")
            other.starttls(context=tls_files.client_context())
            other.ehlo("other.example")
            assert other.mail("ndr@contoso.com")[0] == 250
            assert other.rcpt(journal_address(org.tenant))[0] == 250
            assert other.data(MESSAGE)[0] == 250
        # A slot given back is the peer's again.
        held.pop().close()
        for _ in range(50):
            again = open_raw(server)
            answer = greeting(again)
            again.close()
            if answer.startswith(b"220 "):
                break
            time.sleep(0.1)  # the server has yet to see the close
        assert answer.startswith(b"220 "), answer
    finally:
        for sock in held:
            sock.close()
    assert Delivery.objects.count() == 1


def test_a_network_outside_the_allow_list_is_refused_at_connect(server_factory, tls_files, org, tmp_path):
    networks = tmp_path / "nets.txt"
    networks.write_text(f"{OTHER_PEER}/32\n")
    call_command("update_sender_networks", str(networks), stdout=io.StringIO())
    allowlist = SenderAllowList(enabled=True)
    allowlist.reload()
    server = server_factory(allowlist=allowlist)
    with open_raw(server) as refused:
        answer = greeting(refused)
        assert answer.startswith(b"554 5.7.1 "), answer
        assert refused.recv(1024) == b""
    with open_raw(server, OTHER_PEER) as allowed:
        assert greeting(allowed).startswith(b"220 ")


def test_refused_networks_take_no_session_slot(server_factory, tls_files):
    server = server_factory(allowlist=SenderAllowList(enabled=True), max_sessions=1)
    refused = [open_raw(server) for _ in range(3)]
    try:
        assert all(greeting(sock).startswith(b"554 ") for sock in refused)
    finally:
        for sock in refused:
            sock.close()
    assert server.policy.admitted == 0 and server.policy.peer_sessions == {}


def test_a_client_trickling_a_command_line_gets_421_442_and_is_closed(server_factory, tls_files):
    server = server_factory(timeout=1)
    with open_raw(server) as sock:
        assert greeting(sock).startswith(b"220 ")
        # A byte every 0.1 s never leaves the session a second idle, but the
        # line is not complete a second after its first byte.
        answer = trickle_until_closed(sock, b"EHLO " + b"x" * 200 + b"\r\n", pause=0.1)
    assert answer.startswith(b"421 4.4.2 "), answer


def test_a_client_trickling_data_gets_421_442_and_nothing_is_kept(server_factory, tls_files, org):
    server = server_factory(timeout=1)
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        client.rcpt(journal_address(org.tenant))
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        answer = trickle_until_closed(client.sock, b"Subject: slow\r\n\r\n" + b"x" * 200 + b"\r\n.\r\n", pause=0.1)
    assert answer.startswith(b"421 4.4.2 "), answer
    assert Delivery.objects.count() == 0


def test_commands_arriving_in_pieces_within_the_timeout_are_served_however_long_the_session(server_factory, tls_files):
    """The deadline is per command line, not per session: each NOOP arrives
    in two pieces 0.4 s apart, within its 1 s, and the session outlives the
    timeout several times over."""
    server = server_factory(timeout=1)
    with connect(server, tls_files) as client:
        for _ in range(6):
            client.send(b"NO")
            client.sock.settimeout(0.4)
            with pytest.raises(TimeoutError):
                client.sock.recv(1024)
            client.sock.settimeout(10)
            client.send(b"OP\r\n")
            assert client.getreply()[0] == 250


# --- point 6: source routes and MAIL parameters -----------------------------


def test_a_source_route_is_accepted_and_ignored_in_mail_and_rcpt(server_factory, tls_files, org):
    server = server_factory()
    address = journal_address(org.tenant)
    with connect(server, tls_files) as client:
        assert client.docmd("MAIL FROM:<@relay.example,@hop.example:ndr@contoso.com>")[0] == 250
        assert client.docmd(f"RCPT TO:<@relay.example:{address}>")[0] == 250
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
    row = Delivery.objects.get()
    assert row.mail_from == "ndr@contoso.com" and row.rcpt_to == [address]


@pytest.mark.parametrize(
    "path, code",
    [("<@relay.example:>", 553), ("<@relay.example>", 553), ("<@relay.example,ndr@contoso.com>", 553)],
)
def test_a_malformed_source_route_is_refused(server_factory, tls_files, path, code):
    server = server_factory()
    with connect(server, tls_files) as client:
        assert client.docmd(f"MAIL FROM:{path}")[0] == code


@pytest.mark.parametrize(
    "params, code",
    [
        ("SIZE=abc", 501),
        ("SIZE=-1", 501),
        ("SIZE=", 501),
        ("SIZE", 501),
        ("BODY=BINARYMIME", 501),
        ("BODY=junk", 501),
        ("SMTPUTF8=yes", 501),
        ("SIZE=100 BODY=8BITMIME SMTPUTF8", 250),
        ("body=7bit size=0", 250),
        ("AUTH=<>", 250),
        ("RET=HDRS", 555),
    ],
)
def test_mail_parameters_are_checked_as_rfc_1870_and_6152_say(server_factory, tls_files, params, code):
    server = server_factory()
    with connect(server, tls_files) as client:
        assert client.docmd(f"MAIL FROM:<ndr@contoso.com> {params}")[0] == code


@pytest.mark.parametrize("command", ["RSET now", "QUIT now", "VRFY"])
def test_rset_and_quit_with_an_argument_and_vrfy_without_one_get_501(server_factory, tls_files, command):
    """RFC 5321 4.1.1: `RSET` and `QUIT` take none, `VRFY` needs one (aiosmtpd answers the same)."""
    server = server_factory()
    with connect(server, tls_files) as client:
        assert client.docmd(command)[0] == 501
        assert client.noop()[0] == 250  # still connected


def test_deadline_closes_are_counted_in_the_metrics(server_factory, tls_files):
    from prometheus_client import REGISTRY

    def timeouts() -> float:
        return REGISTRY.get_sample_value("archiva_smtp_rejections_total", {"reason": "timeout"}) or 0.0

    before = timeouts()
    server = server_factory(timeout=1)
    with open_raw(server) as sock:
        assert greeting(sock).startswith(b"220 ")
        assert trickle_until_closed(sock, b"NOOP " + b"x" * 200 + b"\r\n", pause=0.1).startswith(b"421 4.4.2 ")
    assert timeouts() == before + 1


def test_a_session_of_commands_that_lead_to_no_message_is_closed_with_421(server_factory, tls_files, org):
    """A NOOP trickled a byte a second completes within any sane per-line
    deadline: a hundred commands that lead to no message close the session
    (as Postfix's smtpd_junk_command_limit), and each accepted message
    gives the sender a hundred more."""
    server = server_factory()
    with connect(server, tls_files) as client:  # its two EHLOs count
        assert {client.noop()[0] for _ in range(90)} == {250}
        assert client.mail("ndr@contoso.com")[0] == 250
        assert client.rcpt(journal_address(org.tenant))[0] == 250
        assert client.data(MESSAGE)[0] == 250
        assert {client.noop()[0] for _ in range(100)} == {250}
        code, reply = client.noop()
        assert code == 421 and reply.startswith(b"4.7.0"), reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_a_sender_repeating_refused_recipients_is_closed_with_421(server_factory, tls_files, org):
    """Refused RCPTs lead to no message either: a sender that only ever names
    addresses we refuse is bounded like one that repeats NOOP."""
    server = server_factory()
    with connect(server, tls_files) as client:
        assert client.mail("ndr@contoso.com")[0] == 250
        codes = {client.rcpt(f"someone{n}@fabrikam.example")[0] for n in range(98)}
        assert codes == {550}
        code, reply = client.rcpt("someone@fabrikam.example")
        assert code == 421 and reply.startswith(b"4.7.0"), reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
