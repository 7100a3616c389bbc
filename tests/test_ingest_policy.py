"""Sender policy, backpressure and the connector's validation address, over real sockets."""

from __future__ import annotations

import io
import smtplib
import socket
import sys
import time
import urllib.request
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from archive.access import rejections_by_reason
from infra.networks import parse_networks
from ingest.dataread import MEMORY_LIMIT
from ingest.models import Delivery
from ingest.policy import EXCHANGE_ONLINE_NETWORKS, RateLimiter, SenderAllowList, SenderNetwork
from ingest.stats import RejectionCount, untenanted_rejections
from regions.current import current_region
from tenants.actions import add_domain, remove_domain
from tests.conftest import create_tenant_in, make_user, membership_of
from tests.dns_support import verified_domain
from tests.servers import free_port
from tests.smtp_support import connect, journal_address

MESSAGE = b"From: admin@contoso.com\r\nSubject: policy\r\n\r\nbody\r\n"


def test_a_sender_outside_the_allow_list_is_refused_with_5_7_1(server_factory, tls_files, org):
    server = server_factory(allowlist=SenderAllowList(enabled=True))  # defaults: Exchange Online only
    # At connect since issue 16 (a refused network takes no session slot).
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(server, tls_files)
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.7.1")


def test_a_sender_inside_the_allow_list_is_served(server_factory, tls_files, org, tmp_path):
    networks = tmp_path / "nets.txt"
    networks.write_text("127.0.0.0/8\n")
    call_command("update_sender_networks", str(networks), stdout=io.StringIO())
    allowlist = SenderAllowList(enabled=True)
    allowlist.reload()
    server = server_factory(allowlist=allowlist)
    with connect(server, tls_files) as client:
        assert client.mail("ndr@contoso.com")[0] == 250
        assert client.rcpt(journal_address(org.tenant))[0] == 250
        assert client.data(MESSAGE)[0] == 250


def test_the_allow_list_defaults_to_exchange_online_and_understands_mapped_ipv6():
    allowlist = SenderAllowList(enabled=True)
    assert allowlist.allows("40.107.1.2") and allowlist.allows("2a01:111:f400::25")
    assert allowlist.allows("::ffff:104.47.0.9")
    assert not allowlist.allows("127.0.0.1") and not allowlist.allows(None) and not allowlist.allows("junk")
    assert SenderAllowList(enabled=False).allows("203.0.113.9")


def test_update_sender_networks_replaces_the_list_and_names_a_bad_line(db, tmp_path):
    good = tmp_path / "nets.txt"
    good.write_text("# Exchange Online\n40.92.0.0/15\n2a01:111:f400::/48  # v6\n")
    call_command("update_sender_networks", str(good), stdout=io.StringIO())
    assert sorted(SenderNetwork.objects.values_list("cidr", flat=True)) == ["2a01:111:f400::/48", "40.92.0.0/15"]
    bad = tmp_path / "bad.txt"
    bad.write_text("40.92.0.0/15\n300.1.1.1/8\n")
    with pytest.raises(CommandError, match="line 2"):
        call_command("update_sender_networks", str(bad))
    assert SenderNetwork.objects.count() == 2  # unchanged after the error
    call_command("update_sender_networks", "--defaults", stdout=io.StringIO())
    assert SenderNetwork.objects.count() == len(EXCHANGE_ONLINE_NETWORKS)
    with pytest.raises(CommandError):
        call_command("update_sender_networks")


def test_update_sender_networks_reads_the_list_from_standard_input(db, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("40.92.0.0/15\n"))
    call_command("update_sender_networks", "-", stdout=io.StringIO())
    assert list(SenderNetwork.objects.values_list("cidr", flat=True)) == ["40.92.0.0/15"]


def test_parse_networks_accepts_host_bits_and_comments():
    assert [str(n) for n in parse_networks(["10.1.2.3/8 # x", "", "  # only a comment"])] == ["10.0.0.0/8"]


def test_over_capacity_new_sessions_get_421_432(server_factory, tls_files):
    server = server_factory(max_sessions=2)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        greetings = [sock.recv(1024) for sock in held]
        assert [g[:3] for g in greetings[:2]] == [b"220", b"220"]
        assert greetings[2].startswith(b"421 4.3.2")
    finally:
        for sock in held:
            sock.close()


def test_a_noisy_tenant_is_slowed_with_451_while_others_go_on(server_factory, tls_files, org, outsider):
    server = server_factory(tenant_limiter=RateLimiter(rate=0.001, burst=3))
    noisy, quiet = journal_address(org.tenant), journal_address(outsider.memberships.get().tenant)
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        assert [client.rcpt(noisy)[0] for _ in range(3)] == [250, 250, 250]
        code, reply = client.rcpt(noisy)
        assert code == 451 and reply.startswith(b"4.7.1")
        assert client.rcpt(quiet)[0] == 250
    server.policy.rejections.flush()
    assert rejections_by_reason(org.tenant, timezone.now() - timedelta(hours=1)) == {"rate_limited": 1}


def test_a_noisy_peer_is_slowed_with_451(server_factory, tls_files):
    server = server_factory(peer_limiter=RateLimiter(rate=0.001, burst=1))
    with connect(server, tls_files) as client:
        assert client.mail("ndr@contoso.com")[0] == 250
        client.rset()
        code, reply = client.mail("ndr@contoso.com")
    assert code == 451 and reply.startswith(b"4.7.1")


def test_a_full_spool_answers_4xx_after_reading_all_of_data(server_factory, tls_files, org, tmp_path):
    blocker = tmp_path / "spool-is-a-file"
    blocker.write_bytes(b"")
    server = server_factory(spool_dir=blocker / "spool")  # cannot be created: like a full disk
    large = MESSAGE + b"x" * 1000 + b"\r\n" * MEMORY_LIMIT  # too large to stay in memory
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        client.rcpt(journal_address(org.tenant))
        code, reply = client.data(large)
        assert code == 452 and reply.startswith(b"4.3.1")
        assert client.noop()[0] == 250  # still in step with the client
        assert Delivery.objects.count() == 0
        # A message small enough for memory never needed the spool.
        client.mail("ndr@contoso.com")
        client.rcpt(journal_address(org.tenant))
        assert client.data(MESSAGE)[0] == 250
    assert Delivery.objects.count() == 1


def test_connector_validation_mail_lands_in_the_tenant_of_the_verified_sender_domain(
    server_factory, tls_files, org, dns_server
):
    verified_domain(dns_server, membership_of(org.owner), "contoso.com")
    add_domain(membership_of(org.owner), "unverified.example")
    server = server_factory()
    server.directory.refresh()
    validation = current_region().validation_address
    with connect(server, tls_files) as client:
        client.mail("admin@Contoso.com")
        assert client.rcpt(validation)[0] == 250
        code, reply = client.data(MESSAGE)
    assert code == 250
    row = Delivery.objects.get(queue_id=reply.decode().split()[1])
    assert row.tenant == org.tenant and row.rcpt_to == [validation]
    # From a domain nobody verified it is held (tests/test_held_mail.py); without a sender, refused.
    with connect(server, tls_files) as client:
        client.docmd("MAIL FROM:<>")
        code, reply = client.rcpt(validation)
        assert code == 550 and reply.startswith(b"5.7.1")


def test_domain_changes_are_seen_incrementally_and_another_regions_domain_is_refused(
    server_factory, tls_files, org, outsider, dns_server
):
    server = server_factory()
    server.directory.refresh()  # the first, full load
    validation = current_region().validation_address
    alice = membership_of(org.owner)

    def rcpt_code(sender: str) -> tuple[int, bytes]:
        with connect(server, tls_files) as client:
            client.mail(sender)
            return client.rcpt(validation)

    # Fabrikam claims the name too (before Contoso verifies it: after, the claim is refused).
    add_domain(membership_of(outsider), "contoso.com")
    contoso = verified_domain(dns_server, alice, "contoso.com")
    server.directory.refresh()  # incremental: picks up the newly verified domain
    assert rcpt_code("admin@contoso.com")[0] == 250
    # Another tenant's pending claim on the same name does not hide Contoso's route.
    assert server.directory.lookup_domain("contoso.com").tenant_id == org.tenant.pk
    remove_domain(alice, contoso)
    server.directory.refresh()  # incremental: a removed domain is forgotten (its mail would be held, not routed)
    assert server.directory.lookup_domain("contoso.com") is None
    dns_server.reset()
    verified_domain(dns_server, alice, "contoso.com")  # claimed and verified again
    server.directory.refresh()
    assert rcpt_code("admin@contoso.com")[0] == 250
    # A domain verified by a tenant of another region never routes mail here.
    owner = make_user("owner@northwind.example")
    create_tenant_in("eu", "Northwind", owner)
    verified_domain(dns_server, membership_of(owner), "northwind.com")
    server.directory.refresh()
    code, reply = rcpt_code("admin@northwind.com")
    assert code == 550 and reply.startswith(b"5.7.1") and b"another region" in reply


def test_rejections_are_counted_per_tenant_without_a_row_per_rejection(server_factory, tls_files, org):
    server = server_factory(max_size=2000)
    address = journal_address(org.tenant)
    with connect(server, tls_files) as client:
        for _ in range(3):
            client.mail("ndr@contoso.com")
            client.rcpt(address)
            assert client.data(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n")[0] == 552
        client.mail("ndr@contoso.com")
        assert client.rcpt("journal-000000" + "Z" * 57 + "@" + current_region().journal_domain)[0] == 550
    server.policy.rejections.flush()
    assert rejections_by_reason(org.tenant, timezone.now() - timedelta(hours=1)) == {"too_large": 3}
    server.policy.max_recipients = 1  # a recipient over the limit counts against its tenant too
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        assert client.rcpt(address)[0] == 250
        assert client.rcpt(address)[0] == 452
    server.policy.rejections.flush()
    since = timezone.now() - timedelta(hours=1)
    assert rejections_by_reason(org.tenant, since) == {"too_large": 3, "too_many_recipients": 1}
    # One row per tenant, hour and reason; the unknown token names no tenant:
    # a row without one, which only operators see.
    assert RejectionCount.objects.filter(tenant__isnull=False).count() == 2
    assert untenanted_rejections(since) == {"unknown_recipient": 1}


def test_metrics_are_served_on_an_internal_port(server_factory, tls_files, org):
    from ingest.metrics import serve_metrics

    port = free_port()
    serve_metrics("127.0.0.1", port)
    server = server_factory()
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        client.rcpt(journal_address(org.tenant))
        assert client.data(MESSAGE)[0] == 250
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "archiva_smtp_accepted_messages_total" in body
    assert 'archiva_smtp_replies_total{code="250",command="DATA"}' in body
    assert "archiva_smtp_commit_seconds_bucket" in body


def test_metrics_count_every_message_session_and_reply_exactly(server_factory, tls_files, org):
    """The hot path's counts (smtp.Service.counts, one per event loop) reach
    /metrics exactly: per message, per reply code, the commit histogram, and
    the gauges back at their value once the sessions end.  Two servers (two
    loops in their own threads) add up."""
    from prometheus_client import REGISTRY

    names = [
        ("archiva_smtp_accepted_messages_total", {}),
        ("archiva_smtp_accepted_bytes_total", {}),
        ("archiva_smtp_replies_total", {"command": "DATA", "code": "250"}),
        ("archiva_smtp_replies_total", {"command": "RCPT", "code": "250"}),
        ("archiva_smtp_replies_total", {"command": "RCPT", "code": "550"}),
        ("archiva_smtp_commit_seconds_count", {}),
        ("archiva_smtp_commit_seconds_bucket", {"le": "+Inf"}),
        ("archiva_smtp_commit_seconds_bucket", {"le": "30.0"}),
        ("archiva_smtp_sessions", {}),
        ("archiva_smtp_commit_queue", {}),
    ]

    def values() -> list[float]:
        return [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in names]

    before = values()
    sum_before = REGISTRY.get_sample_value("archiva_smtp_commit_seconds_sum") or 0.0
    servers = [server_factory(), server_factory()]
    address = journal_address(org.tenant)
    for n in range(5):
        with connect(servers[n % 2], tls_files) as client:
            client.mail("ndr@contoso.com")
            assert client.rcpt(address)[0] == 250
            if n == 0:
                assert client.rcpt("journal-000000" + "z" * 57 + "@" + address.split("@")[1])[0] == 550
            assert client.data(MESSAGE)[0] == 250
    deadline = time.monotonic() + 5  # a session ends in its loop after the client's QUIT
    while values()[-2] != before[-2] and time.monotonic() < deadline:
        time.sleep(0.02)
    delta = [after - first for after, first in zip(values(), before, strict=True)]
    assert delta[:2] == [5, 5 * len(MESSAGE)]  # the bytes as received: MESSAGE needs no dot-stuffing
    assert delta[2:] == [5, 5, 1, 5, 5, 5, 0, 0]
    assert (REGISTRY.get_sample_value("archiva_smtp_commit_seconds_sum") or 0.0) > sum_before


def test_logs_never_show_a_journal_token(server_factory, tls_files, org, caplog):
    import logging

    caplog.set_level(logging.INFO)
    server = server_factory()
    address = journal_address(org.tenant)
    with connect(server, tls_files) as client:
        client.mail("ndr@contoso.com")
        client.rcpt(address)
        client.data(MESSAGE)
    token = address.split("@")[0][len("journal-") :]
    deadline = time.monotonic() + 5  # accepted lines are written in bursts (smtp.ACCEPTED_LOG_DELAY)
    while not any("accepted" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("accepted" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() for r in caplog.records)


def test_tls_required_refusals_are_counted(server_factory, tls_files):
    from prometheus_client import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("archiva_smtp_rejections_total", {"reason": "tls_required"}) or 0.0

    server = server_factory()
    before = counted()
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.ehlo("x")
    assert client.mail("ndr@contoso.com")[0] == 530
    client.close()
    server.policy.rejections.flush()
    assert counted() == before + 1
    # Before RCPT no tenant is known: no tenant's chart row, the operators' count only.
    assert not RejectionCount.objects.filter(tenant__isnull=False).exists()
    assert untenanted_rejections(timezone.now() - timedelta(hours=1)) == {"tls_required": 1}


def test_json_logs_are_one_object_per_line_with_tokens_redacted():
    import json
    import logging

    from infra.logs import JSONFormatter, RedactTokens

    record = logging.LogRecord("ingest", logging.INFO, __file__, 1, "rcpt %s", ("journal-000000" + "a" * 57,), None)
    RedactTokens().filter(record)
    entry = json.loads(JSONFormatter().format(record))
    assert entry["level"] == "info" and entry["logger"] == "ingest"
    assert entry["message"] == "rcpt journal-000000…" and "a" * 57 not in json.dumps(entry)


@pytest.mark.parametrize("formatter_name", ["PlainFormatter", "JSONFormatter"])
def test_every_part_of_a_formatted_line_is_redacted(formatter_name):
    """Message, traceback (even one another formatter cached on the record
    first, unredacted) and stack: a token never reaches the output."""
    import logging

    from infra import logs

    token = "journal-000000" + "b" * 57
    try:
        raise ValueError(f"no route for {token}@archive.archiva.com")
    except ValueError:
        record = logging.LogRecord("ingest", logging.ERROR, __file__, 1, "rcpt %s", (token,), sys.exc_info())
    record.stack_info = f'Stack (most recent call last):\n  File "x.py", line 1, in f\n    send("{token}")'
    logging.Formatter().format(record)  # caches the unredacted traceback in record.exc_text
    assert token in record.exc_text
    line = getattr(logs, formatter_name)().format(record)
    assert token not in line and "b" * 57 not in line
    assert line.count("journal-000000…") == 3  # message, exception, stack
