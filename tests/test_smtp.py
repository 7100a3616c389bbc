"""The SMTP ingest over real sockets with STARTTLS: every row of DESIGN's table."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
import threading
import time

import pytest
from django.db import connection

from infra.storage import get_store, raw_key
from ingest.models import Delivery
from tenants.actions import rotate_journal_token
from tests.smtp_support import connect, corpus_dir, journal_address, send, start_ingest

MESSAGE = b"From: a@contoso.com\r\nTo: b@fabrikam.com\r\nSubject: hi\r\n\r\nhello\r\n"


def stored_bytes(delivery: Delivery) -> bytes:
    return delivery.read_report()


def queue_id_of(reply: bytes) -> str:
    return reply.decode().split()[1]


def test_ehlo_advertises_what_exchange_needs(ingest, tls_files):
    with connect(ingest, tls_files, starttls=False) as client:
        for extension in ("starttls", "size", "8bitmime", "pipelining", "smtputf8"):
            assert client.has_extn(extension), extension
        assert int(client.esmtp_features["size"]) == 200 * 1024 * 1024


def test_mail_before_starttls_is_refused_with_530(ingest, tls_files, org):
    with connect(ingest, tls_files, starttls=False) as client:
        code, reply = client.mail("ndr@contoso.com")
    assert code == 530 and reply.startswith(b"5.7.0")


def test_tls_is_at_least_1_2(ingest, tls_files):
    context = tls_files.client_context()
    with pytest.warns(DeprecationWarning):
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
    client = smtplib.SMTP("127.0.0.1", ingest.port, timeout=10)
    client.ehlo("x")
    with pytest.raises((ssl.SSLError, smtplib.SMTPException, OSError)):
        client.starttls(context=context)
    client.close()


def test_known_token_is_accepted_and_stored_with_its_envelope(ingest, tls_files, org):
    address = journal_address(org.tenant)
    code, reply = send(ingest, tls_files, [address], MESSAGE, sender="ndr@contoso.com")
    assert code == 250 and reply.startswith(b"2.0.0 ")
    delivery = Delivery.objects.select_related("tenant").get(queue_id=queue_id_of(reply))
    assert delivery.tenant == org.tenant
    assert delivery.rcpt_to == [address]
    assert delivery.mail_from == "ndr@contoso.com"
    assert delivery.peer_ip == "127.0.0.1"
    assert delivery.helo == "outbound.protection.outlook.com"
    assert delivery.tls_version in ("TLSv1.2", "TLSv1.3") and delivery.tls_cipher
    assert delivery.size == len(MESSAGE)
    assert delivery.sha256 == hashlib.sha256(MESSAGE).hexdigest()
    assert stored_bytes(delivery) == MESSAGE


def test_unknown_token_is_rejected_before_data(ingest, tls_files, org):
    unknown = "journal-000000" + "A" * 57 + "@archive.archiva.com"
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        code, reply = client.rcpt(unknown)
    assert code == 550 and reply.startswith(b"5.1.1")


@pytest.mark.parametrize(
    "local",
    ["journal-123", "journal-" + "A" * 63, "abuse", "journal-00000!" + "A" * 56],
)
def test_malformed_journal_local_parts_are_unknown(ingest, tls_files, local):
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        code, reply = client.rcpt(f"{local}@archive.archiva.com")
    assert code == 550 and reply.startswith(b"5.1.1")


def test_other_domains_and_other_regions_are_refused_with_571(ingest, tls_files, org):
    token = journal_address(org.tenant).split("@")[0]
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        for domain in ("example.com", "archive.mailarchiva.eu", "archiva.com"):
            code, reply = client.rcpt(f"{token}@{domain}")
            assert code == 550 and reply.startswith(b"5.7.1"), domain


def test_domain_is_case_insensitive_but_the_token_is_not(ingest, tls_files, org):
    address = journal_address(org.tenant)
    local, _, domain = address.partition("@")
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        assert client.rcpt(f"{local}@{domain.upper()}")[0] == 250
        i = next(i for i in range(len(local) - 1, 0, -1) if local[i].isalpha())
        assert client.rcpt(f"{local[:i]}{local[i].swapcase()}{local[i + 1 :]}@{domain}")[0] == 550


def test_declared_size_over_the_limit_is_refused_with_552(ingest, tls_files, org):
    with connect(ingest, tls_files) as client:
        code, reply = client.mail("ndr@contoso.com", options=[f"SIZE={200 * 1024 * 1024 + 1}"])
    assert code == 552 and reply.startswith(b"5.3.4")


def test_data_over_the_limit_is_refused_with_552_and_nothing_is_kept(transactional_db, tls_files, org):
    server = start_ingest(tls_files, policy={"max_size": 10_000})
    try:
        with connect(server, tls_files) as client:
            client.mail("ndr@contoso.com")
            client.rcpt(journal_address(org.tenant))
            code, reply = client.data(b"Subject: big\r\n\r\n" + b"x" * 20_000 + b"\r\n")
            assert code == 552 and reply.startswith(b"5.3.4")
            # The session goes on: the next message is fine.
            client.mail("ndr@contoso.com")
            client.rcpt(journal_address(org.tenant))
            assert client.data(MESSAGE)[0] == 250
    finally:
        server.stop_thread()
    assert Delivery.objects.count() == 1


def test_storage_trouble_answers_451_never_5xx(ingest, tls_files, org, settings):
    import shutil

    shutil.rmtree(settings.DATA_DIR / "buckets" / org.tenant.bucket)
    code, reply = send(ingest, tls_files, [journal_address(org.tenant)], MESSAGE)
    assert code == 451 and reply.startswith(b"4.3.0")
    assert Delivery.objects.count() == 0


def test_database_trouble_answers_451_and_nothing_is_acknowledged(ingest, tls_files, org):
    # A real failure inside PostgreSQL: a trigger that refuses the insert.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION archiva_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ "
            "LANGUAGE plpgsql; CREATE TRIGGER refuse BEFORE INSERT ON ingest_delivery "
            "FOR EACH ROW EXECUTE FUNCTION archiva_refuse();"
        )
    try:
        code, reply = send(ingest, tls_files, [journal_address(org.tenant)], MESSAGE)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse ON ingest_delivery; DROP FUNCTION archiva_refuse();")
    assert code == 451 and reply.startswith(b"4.3.0")
    assert Delivery.objects.count() == 0


def test_a_message_for_two_tenants_is_stored_once_per_tenant(ingest, tls_files, org, outsider):
    fabrikam = outsider.memberships.get().tenant
    code, reply = send(ingest, tls_files, [journal_address(org.tenant), journal_address(fabrikam)], MESSAGE)
    assert code == 250
    rows = Delivery.objects.select_related("tenant").filter(queue_id=queue_id_of(reply))
    assert {row.tenant for row in rows} == {org.tenant, fabrikam}
    for row in rows:
        assert row.rcpt_to == [journal_address(row.tenant)]
        assert stored_bytes(row) == MESSAGE


def test_smuggled_end_of_data_does_not_start_a_second_message(ingest, tls_files, org):
    address = journal_address(org.tenant)
    for fake_end in (b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n"):
        smuggled = (
            b"Subject: outer\r\n\r\nhello"
            + fake_end
            + b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<"
            + address.encode()
            + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        )
        with connect(ingest, tls_files) as client:
            client.mail("ndr@contoso.com")
            client.rcpt(address)
            code, reply = client.data(smuggled)
            assert code == 250
            assert client.noop()[0] == 250  # no stray replies queued behind
        row = Delivery.objects.get(queue_id=queue_id_of(reply))
        assert stored_bytes(row).count(b"Subject: smuggled") == 1
    assert Delivery.objects.count() == 4


def test_bare_lf_and_long_lines_are_kept_byte_for_byte(ingest, tls_files, org):
    raw = b"Subject: lf\r\n\r\nline one\nline two\n" + b"y" * 5000 + b"\r\n"
    code, reply = send(ingest, tls_files, [journal_address(org.tenant)], raw)
    assert code == 250
    assert stored_bytes(Delivery.objects.get(queue_id=queue_id_of(reply))) == raw


def test_pipelined_commands_and_two_messages_in_one_session(ingest, tls_files, org):
    address = journal_address(org.tenant)
    with connect(ingest, tls_files) as client:
        client.send(f"MAIL FROM:<a@contoso.com>\r\nRCPT TO:<{address}>\r\nRCPT TO:<{address}>\r\nDATA\r\n".encode())
        assert [client.getreply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(
            b"Subject: one\r\n\r\n.dot\r\n.\r\nMAIL FROM:<b@contoso.com>\r\nRCPT TO:<" + address.encode() + b">\r\n"
        )
        replies = [client.getreply() for _ in range(3)]
        assert [code for code, _ in replies] == [250, 250, 250]
        assert client.data(MESSAGE)[0] == 250
    first = Delivery.objects.get(queue_id=queue_id_of(replies[0][1]))
    assert stored_bytes(first) == b"Subject: one\r\n\r\ndot\r\n"
    assert first.rcpt_to == [address, address]
    assert Delivery.objects.count() == 2


@pytest.mark.parametrize(
    "command, code",
    [
        ("MAIL FROM:<broken", 501),
        ("MAIL FROM:<no-domain>", 553),
        ("MAIL FROM:", 501),
        ("MAIL TO:<a@b.c>", 501),
        ("RCPT TO:<x@archive.archiva.com>", 503),
        ("DATA", 503),
        ("BOGUS", 500),
    ],
)
def test_malformed_commands_get_5xx_syntax_replies(ingest, tls_files, command, code):
    with connect(ingest, tls_files) as client:
        assert client.docmd(command)[0] == code


def test_malformed_recipient_gets_a_5xx_syntax_reply(ingest, tls_files):
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        assert client.docmd("RCPT TO:<no-at-sign>")[0] in (501, 553)
        assert client.docmd("RCPT TO:")[0] == 501


def test_a_stalled_client_is_timed_out(transactional_db, tls_files, org):
    server = start_ingest(tls_files, timeout=1)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        assert sock.recv(1024).startswith(b"220")
        started = time.monotonic()
        assert sock.recv(1024).startswith(b"421 4.4.2")  # said why, then
        assert sock.recv(1024) == b""  # hung up on us
        assert time.monotonic() - started < 8
        sock.close()
    finally:
        server.stop_thread()


def test_a_rotated_token_and_a_new_tenant_are_seen_within_seconds(ingest, tls_files, org):
    old = journal_address(org.tenant)
    rotate_journal_token(org.tenant)
    new = journal_address(org.tenant)
    deadline = time.monotonic() + 10
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        while client.rcpt(new)[0] != 250:
            assert time.monotonic() < deadline, "new token not seen within 10 s"
            time.sleep(0.1)
        assert client.rcpt(old)[0] == 250  # still in its grace period


def test_an_expired_token_is_refused(ingest, tls_files, org):
    from datetime import timedelta

    old = journal_address(org.tenant)
    rotate_journal_token(org.tenant, grace=timedelta(0))
    deadline = time.monotonic() + 10
    with connect(ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        while client.rcpt(old)[0] == 250:
            assert time.monotonic() < deadline, "expired token still accepted"
            time.sleep(0.1)
        assert client.rcpt(old)[0] == 550


def test_every_corpus_sample_is_accepted_and_kept_exactly(ingest, tls_files, org):
    samples = sorted(p for p in corpus_dir().glob("*.eml"))
    assert len(samples) >= 12
    for sample in samples:
        # On the wire every line ends in CRLF, as Exchange sends it.
        raw = sample.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        code, reply = send(ingest, tls_files, [journal_address(org.tenant)], raw)
        assert code == 250, sample.name
        row = Delivery.objects.get(queue_id=queue_id_of(reply))
        assert stored_bytes(row) == raw


def test_concurrent_senders_to_two_tenants_never_mix(ingest, tls_files, org, outsider):
    fabrikam = outsider.memberships.get().tenant
    targets = {org.tenant.id: journal_address(org.tenant), fabrikam.id: journal_address(fabrikam)}
    errors: list[str] = []

    def sender(tenant_id: int, n: int):
        try:
            for i in range(n):
                body = f"Subject: for {tenant_id} #{i}\r\nX-Tenant: {tenant_id}\r\n\r\nbody\r\n".encode()
                code, _ = send(ingest, tls_files, [targets[tenant_id]], body)
                if code != 250:
                    errors.append(f"{tenant_id}: {code}")
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=sender, args=(tid, 15)) for tid in targets for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    rows = Delivery.objects.select_related("tenant")
    assert rows.count() == 2 * 4 * 15
    for row in rows:
        assert f"X-Tenant: {row.tenant_id}\r\n".encode() in stored_bytes(row)


def test_a_1_mb_message_is_stored_intact(ingest, tls_files, org):
    body = b"Subject: 1MB\r\n\r\n" + (b"0123456789" * 99 + b"\r\n") * 1000
    code, reply = send(ingest, tls_files, [journal_address(org.tenant)], body)
    assert code == 250
    row = Delivery.objects.get(queue_id=queue_id_of(reply))
    assert row.size == len(body) and stored_bytes(row) == body


@pytest.mark.parametrize("size", [2_000, 300_000], ids=["in-memory", "spooled"])
def test_the_accepted_line_and_the_row_carry_the_sha256_of_the_message_as_received(
    ingest, tls_files, org, caplog, size
):
    """In memory the committer hashes the message, spooled the session does: either way
    the row and the operator's `accepted` line name the bytes that were stored."""
    body = b"Subject: hashed\r\n\r\n" + (b"x" * 98 + b"\r\n") * (size // 100)
    with caplog.at_level("INFO", logger="ingest.smtp"):
        code, reply = send(ingest, tls_files, [journal_address(org.tenant)], body)
        assert code == 250
        queue_id = queue_id_of(reply)
        deadline = time.monotonic() + 10
        while not any(queue_id in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)  # accepted lines are written in bursts
    digest = hashlib.sha256(body).hexdigest()
    row = Delivery.objects.select_related("tenant").get(queue_id=queue_id)
    assert row.sha256 == digest and stored_bytes(row) == body
    [line] = [r.getMessage() for r in caplog.records if queue_id in r.getMessage()]
    assert f"accepted {queue_id} size={len(body)} sha256={digest} " in line


@pytest.mark.slow
def test_a_60_mb_message_streams_to_storage_intact(ingest, tls_files, org):
    line = b"A" * 998 + b"\r\n"
    body = b"Subject: 60MB\r\n\r\n" + line * (60 * 1024 * 1024 // len(line))
    code, reply = send(ingest, tls_files, [journal_address(org.tenant)], body)
    assert code == 250
    row = Delivery.objects.get(queue_id=queue_id_of(reply))
    assert row.size == len(body)
    assert get_store().verify(org.tenant.bucket, raw_key(row.sha256), row.sha256) == len(body)


def test_the_null_sender_is_accepted(ingest, tls_files, org):
    with connect(ingest, tls_files) as client:
        assert client.docmd("MAIL FROM:<>")[0] == 250
        assert client.rcpt(journal_address(org.tenant))[0] == 250
        code, reply = client.data(MESSAGE)
    assert code == 250
    assert Delivery.objects.get(queue_id=queue_id_of(reply)).mail_from == ""


def read_reply(sock) -> bytes:
    """One whole (possibly multi-line) reply from a raw socket or TLS socket."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(line) >= 4 and line[3:4] == b" " for line in lines[:-1]):
            return data


def test_commands_pipelined_behind_starttls_are_discarded(ingest, tls_files, org):
    """RFC 3207 5 (CVE-2011-0411): plaintext sent with STARTTLS must not be run after the handshake."""
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as raw:
        assert read_reply(raw).startswith(b"220")
        raw.sendall(b"EHLO outbound.protection.outlook.com\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@attacker.example>\r\n")
        assert read_reply(raw).startswith(b"220 2.0.0")
        with tls_files.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            # The injected MAIL was not run: MAIL now needs EHLO again, and no
            # stray reply to it is waiting.
            tls.sendall(b"MAIL FROM:<ndr@contoso.com>\r\n")
            assert read_reply(tls).startswith(b"503 5.5.1")
            tls.sendall(b"EHLO outbound.protection.outlook.com\r\n")
            features = read_reply(tls)
            assert b"STARTTLS" not in features and b"PIPELINING" in features
            tls.sendall(b"MAIL FROM:<ndr@contoso.com>\r\n")
            assert read_reply(tls).startswith(b"250")


def test_an_overlong_command_line_is_refused_and_the_session_goes_on(ingest, tls_files):
    with connect(ingest, tls_files) as client:
        client.send(b"NOOP " + b"x" * 10_000 + b"\r\n")
        assert client.getreply()[0] == 500
        assert client.noop()[0] == 250


def test_a_client_that_only_sends_garbage_is_disconnected(ingest, tls_files):
    with connect(ingest, tls_files) as client:
        codes = [client.docmd(f"XYZZY{n}")[0] for n in range(20)]
        assert set(codes) == {500}
        code, _ = client.docmd("XYZZY")
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_a_slow_sender_inside_data_is_not_timed_out_while_it_keeps_the_minimum_rate(transactional_db, tls_files, org):
    """DATA's deadline grows with the bytes received (ingest.smtp.DATA_MIN_RATE):
    3 s for a message, three times the timeout, at 32 KB/s, never 1 s silent."""
    server = start_ingest(tls_files, timeout=1)
    try:
        with connect(server, tls_files) as client:
            client.mail("ndr@contoso.com")
            client.rcpt(journal_address(org.tenant))
            client.putcmd("DATA")
            assert client.getreply()[0] == 354
            for n in range(6):
                client.send(f"X-Line-{n}: {'s' * 16_000}\r\n".encode())
                time.sleep(0.5)
            client.send(b"\r\nbody\r\n.\r\n")
            assert client.getreply()[0] == 250
    finally:
        server.stop_thread()


def test_an_idle_session_is_closed_with_421_and_a_talking_one_is_not(transactional_db, tls_files, org):
    """ARCHIVA_SMTP_TIMEOUT: a session silent that long gets `421 4.4.2` and
    is closed; one that keeps sending commands stays open, however long."""
    server = start_ingest(tls_files, timeout=1)
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        connected = time.monotonic()
        assert idle.recv(1024).startswith(b"220 ")
        closed: list[tuple[float, bytes]] = []

        def read_until_closed() -> None:
            received = b""
            while chunk := idle.recv(1024):
                received += chunk
            closed.append((time.monotonic() - connected, received))

        reader = threading.Thread(target=read_until_closed, daemon=True)
        reader.start()
        talking = connect(server, tls_files)
        for _ in range(10):  # 2.5 s of a command every 0.25 s
            assert talking.noop()[0] == 250
            time.sleep(0.25)
        reader.join(5)
        assert closed, "the idle session was not closed"
        waited, received = closed[0]
        assert received.startswith(b"421 4.4.2 "), received
        assert 1.0 <= waited < 2.5, waited
        assert talking.noop()[0] == 250  # 2.5 s since it connected, never 1 s silent
        talking.quit()
        idle.close()
    finally:
        server.stop_thread()
