"""IMAP journaling against a real Dovecot whose XOAUTH2 sign-ins the Microsoft fake checks.

The journal mailbox is filled as a delivery agent fills it; the poller signs
in with the app-only token the tenant's Microsoft 365 connection gets from
the fake, stores the reports exactly as the SMTP ingest stores them, and only
then deletes or moves them on the server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imapclient
import pytest
from django.db import connection as db_connection

from imapjournal import config
from imapjournal.models import ImapJournal
from imapjournal.poller import Poller, backoff_seconds, note_durable, poll_once, report_queue_id, store_reports
from ingest.models import Delivery
from tenants.models import AuditEvent
from tests.archive_support import backend_fixture, process, report, search_ids  # noqa: F401 (the `backend` fixture)
from tests.conftest import PASSWORD, membership_of
from tests.dovecot_support import Dovecot
from tests.ms_support import connect

ROOT = Path(__file__).resolve().parents[1]
MAILBOX = "journal@contoso.com"


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """Processing runs in this process (`process`); what the poller publishes is not needed."""
    monkeypatch.setattr("imapjournal.poller.enqueue", lambda ids: True)


def reports(n: int, tag: str = "Quarterly") -> list[bytes]:
    return [
        report(f"{tag.lower()}-{i}@contoso.com", f"{tag} figures {i}", [("To", "erin@contoso.com")]) for i in range(n)
    ]


def set_up(org, fake, server: Dovecot, *, after_archive: str = "delete", move_folder: str = "", grant: bool = True):
    """Contoso connected to the fake, its app granted the journal mailbox, IMAP journaling on."""
    connection = connect(fake, org.tenant)
    if grant:
        fake.grant_mailbox(str(connection.client_id), MAILBOX)
    settings = config.parse(
        server=f"127.0.0.1:{server.port}",
        mailbox=MAILBOX,
        enabled=True,
        after_archive=after_archive,
        move_folder=move_folder,
    )
    journal = config.update_journal(membership_of(org.owner), settings)
    return journal, connection


def deliveries(org) -> list[Delivery]:
    return list(Delivery.objects.filter(tenant=org.tenant).order_by("pk"))


def test_reports_in_the_journal_mailbox_are_archived_searchable_and_then_deleted(
    org, outsider, ms_fake, dovecot, backend
):
    journal, _ = set_up(org, ms_fake, dovecot)
    sent = reports(3)
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)

    assert poll_once(journal), journal.last_error

    stored = deliveries(org)
    assert sorted(d.sha256 for d in stored) == sorted(hashlib.sha256(raw).hexdigest() for raw in sent)
    assert {d.source for d in stored} == {Delivery.Source.JOURNAL}  # the journal report's own path
    assert all(d.rcpt_to == [MAILBOX] and d.tls_version.startswith("TLS") for d in stored)
    assert dovecot.messages(MAILBOX) == []  # deleted only after they were durable
    for delivery in stored:
        assert process(delivery.pk) == Delivery.Status.ARCHIVED
        assert delivery.read_report() in sent
    assert len(search_ids(backend, org.tenant, "quarterly")) == 3
    assert search_ids(backend, org.tenant, 'subject:"Quarterly figures 1"')
    journal.refresh_from_db()
    assert (journal.last_uid, journal.archived, journal.last_error) == (3, 3, "")
    assert journal.uidvalidity is not None
    # Nothing of Contoso's reached the outsider's tenant.
    assert not Delivery.objects.exclude(tenant=org.tenant).exists()


def test_moved_reports_wait_in_the_chosen_folder_and_are_not_read_again(org, outsider, ms_fake, dovecot):
    journal, _ = set_up(org, ms_fake, dovecot, after_archive="move", move_folder="Archived/Journal")
    sent = reports(4)
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)

    assert poll_once(journal), journal.last_error
    assert dovecot.messages(MAILBOX) == []
    assert sorted(dovecot.messages(MAILBOX, "Archived/Journal")) == sorted(sent)
    assert len(deliveries(org)) == 4

    dovecot.deliver(MAILBOX, reports(1, "Later")[0])
    assert poll_once(journal), journal.last_error
    assert len(deliveries(org)) == 5
    assert len(dovecot.messages(MAILBOX, "Archived/Journal")) == 5


def test_a_report_stored_before_a_crash_is_not_stored_twice(org, outsider, ms_fake, dovecot):
    """A crash after the commit but before the delete leaves the reports on the
    server: read again, they are found recorded and only taken off the server."""
    journal, _ = set_up(org, ms_fake, dovecot)
    sent = reports(3)
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)
    from imapjournal.poller import Peer

    assert store_reports(journal, Peer("127.0.0.1"), sent[:2]) == 2  # stored, then the process died

    assert poll_once(journal), journal.last_error
    stored = deliveries(org)
    assert len(stored) == 3 and len({d.sha256 for d in stored}) == 3
    assert {d.queue_id for d in stored} == {report_queue_id(MAILBOX, d.sha256) for d in stored}
    assert dovecot.messages(MAILBOX) == []
    assert store_reports(journal, Peer("127.0.0.1"), sent) == 0  # a third look changes nothing


def test_reports_noted_durable_before_a_crash_are_deleted_without_storing_them_again(org, outsider, ms_fake, dovecot):
    journal, _ = set_up(org, ms_fake, dovecot)
    sent = reports(2)
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)
    assert poll_once(journal)
    dovecot.deliver(MAILBOX, reports(1, "Next")[0])
    dovecot.deliver(MAILBOX, reports(1, "Flagged")[0])
    # The poller got as far as noting UIDs 3 and 4 durable (their reports recorded), then died
    # before deleting them: one of them flagged \Deleted but not expunged.
    from imapjournal.poller import Peer

    store_reports(journal, Peer("127.0.0.1"), dovecot.messages(MAILBOX))
    note_durable(journal, 4, 2)
    dovecot.flag_deleted(MAILBOX)

    assert poll_once(journal), journal.last_error
    assert dovecot.messages(MAILBOX) == []  # expunged too, not left flagged for ever
    assert len(deliveries(org)) == 4


def test_a_new_uidvalidity_means_reading_the_mailbox_again_without_losing_or_doubling(org, outsider, ms_fake, dovecot):
    journal, _ = set_up(org, ms_fake, dovecot)
    first = reports(3)
    for raw in first:
        dovecot.deliver(MAILBOX, raw)
    assert poll_once(journal)
    journal.refresh_from_db()
    old_validity = journal.uidvalidity
    assert journal.last_uid == 3

    # The mailbox is rebuilt (a restore, a migration): UIDs start at 1 again, under a new UIDVALIDITY.
    # Its UIDs 1 to 3 are new reports, one of them a report archived before.
    later = reports(2, "Restored")
    for raw in [*later, first[0]]:
        dovecot.deliver(MAILBOX, raw)
    dovecot.reset_uidvalidity(MAILBOX)

    assert poll_once(journal), journal.last_error
    journal.refresh_from_db()
    assert journal.uidvalidity != old_validity
    stored = deliveries(org)
    assert len(stored) == 5  # both new reports stored (UIDs 1-2 are not "done" under the old numbering)
    assert {hashlib.sha256(raw).hexdigest() for raw in [*first, *later]} == {d.sha256 for d in stored}
    assert dovecot.messages(MAILBOX) == []


def test_a_refused_token_is_a_clear_error_with_backoff_and_shows_on_status(org, outsider, ms_fake, dovecot, client):
    journal, connection = set_up(org, ms_fake, dovecot, grant=False)  # no FullAccess on the mailbox
    sent = reports(2)
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)

    assert not poll_once(journal)
    journal.refresh_from_db()
    assert "refused the app's token for journal@contoso.com" in journal.last_error
    assert "IMAP.AccessAsApp" in journal.last_error
    assert journal.failures == 1
    assert (journal.backoff_until - journal.last_error_at).total_seconds() == backoff_seconds(1) == 30
    assert not poll_once(journal)
    journal.refresh_from_db()
    assert (journal.backoff_until - journal.last_error_at).total_seconds() == backoff_seconds(2) == 60
    assert sorted(dovecot.messages(MAILBOX)) == sorted(sent)  # nothing taken off the server
    assert deliveries(org) == []

    client.login(email=org.admin.email, password=PASSWORD)
    page = client.get("/status/").content.decode()
    assert 'id="imap-status"' in page and "refused the app&#x27;s token" in page
    client.login(email=org.user.email, password=PASSWORD)
    assert 'id="imap-status"' not in client.get("/status/").content.decode()  # admins fix it; users do not see it

    ms_fake.grant_mailbox(str(connection.client_id), MAILBOX)
    assert poll_once(journal)
    journal.refresh_from_db()
    assert (journal.last_error, journal.failures, journal.backoff_until) == ("", 0, None)
    assert len(deliveries(org)) == 2
    client.login(email=org.admin.email, password=PASSWORD)
    assert 'id="imap-status"' not in client.get("/status/").content.decode()


def test_an_unreachable_server_is_named_in_the_error(org, outsider, ms_fake, dovecot):
    journal, _ = set_up(org, ms_fake, dovecot)
    dovecot.stop()
    assert not poll_once(journal)
    journal.refresh_from_db()
    assert f"Cannot reach the IMAP server 127.0.0.1:{dovecot.port}" in journal.last_error


def test_the_page_saves_audits_and_tests_the_connection(org, outsider, ms_fake, dovecot, client):
    connection = connect(ms_fake, org.tenant)
    ms_fake.grant_mailbox(str(connection.client_id), MAILBOX)
    for raw in reports(3):
        dovecot.deliver(MAILBOX, raw)
    client.login(email=org.admin.email, password=PASSWORD)
    page = client.get("/settings/m365/imap/")
    assert page.status_code == 200 and "outlook.office365.com:993" in page.content.decode()

    bad = client.post(
        "/settings/m365/imap/",
        {"server": "imap://nowhere/", "mailbox": MAILBOX, "after_archive": "delete", "enabled": "on"},
    )
    assert bad.status_code == 200 and "is not a host name like outlook.office365.com" in bad.content.decode()
    bad = client.post(
        "/settings/m365/imap/",
        {"server": f"127.0.0.1:{dovecot.port}", "mailbox": "", "after_archive": "delete", "enabled": "on"},
    )
    assert "enter the journal mailbox" in bad.content.decode().lower()
    assert not ImapJournal.objects.filter(tenant=org.tenant, enabled=True).exists()

    saved = client.post(
        "/settings/m365/imap/",
        {"server": f"127.0.0.1:{dovecot.port}", "mailbox": MAILBOX, "after_archive": "move", "move_folder": "Done"},
    )
    assert saved.status_code == 302
    event = AuditEvent.objects.filter(tenant=org.tenant, detail__setting="imap.journal").get()
    assert event.detail["changed"]["mailbox"] == {"old": "", "new": MAILBOX}

    tested = client.post("/settings/m365/imap/test/", follow=True).content.decode()
    assert "Signed in to journal@contoso.com: 3 messages in INBOX." in tested
    assert 'id="imap-test-count">3<' in tested
    assert AuditEvent.objects.filter(tenant=org.tenant, detail__setting="imap.test", detail__ok=True).exists()

    ms_fake.revoke_mailbox(str(connection.client_id), MAILBOX)
    tested = client.post("/settings/m365/imap/test/", follow=True).content.decode()
    assert 'id="imap-test-error"' in tested and "refused the app&#x27;s token for journal@contoso.com" in tested


def test_only_admins_open_the_page_and_each_tenant_sees_its_own(org, outsider, client):
    client.login(email=org.user.email, password=PASSWORD)
    assert client.get("/settings/m365/imap/").status_code == 403
    assert client.post("/settings/m365/imap/test/").status_code == 403
    client.login(email=org.auditor.email, password=PASSWORD)
    assert client.get("/settings/m365/imap/").status_code == 403
    owner = membership_of(org.owner)
    config.update_journal(owner, config.parse(server="outlook.office365.com", mailbox=MAILBOX, enabled=False,
                                              after_archive="delete", move_folder=""))  # fmt: skip
    client.login(email=outsider.email, password=PASSWORD)
    page = client.get("/settings/m365/imap/").content.decode()
    assert f'value="{MAILBOX}"' not in page and 'id="id_mailbox"' in page  # Fabrikam's own (empty) settings


def test_settings_are_checked_with_messages_naming_the_field():
    with pytest.raises(config.FieldError, match="server: 'x:99999': '99999' is not a port"):
        config.parse(server="x:99999", mailbox="", enabled=False, after_archive="delete", move_folder="")
    with pytest.raises(config.FieldError, match="mailbox: 'not-an-address' is not an email address"):
        config.parse(server="h", mailbox="not-an-address", enabled=False, after_archive="delete", move_folder="")
    with pytest.raises(config.FieldError, match="move_folder"):
        config.parse(server="h", mailbox=MAILBOX, enabled=True, after_archive="move", move_folder="INBOX")
    parsed = config.parse(server=" Outlook.Office365.com ", mailbox="J@Contoso.com", enabled=True,
                          after_archive="delete", move_folder="")  # fmt: skip
    assert (parsed.host, parsed.port, parsed.mailbox) == ("outlook.office365.com", 993, "j@contoso.com")


def test_the_poller_reads_new_mail_at_once_through_idle(transactional_db, org, outsider, ms_fake, dovecot, settings):
    settings.ARCHIVA_IMAP_POLL_INTERVAL = 600  # only IDLE can bring the second report in time
    journal, _ = set_up(org, ms_fake, dovecot)
    dovecot.deliver(MAILBOX, reports(1)[0])
    with poller_running():
        wait_until(lambda: len(deliveries(org)) == 1, "the first report")
        dovecot.deliver(MAILBOX, reports(1, "Pushed")[0])
        wait_until(lambda: len(deliveries(org)) == 2, "the report IDLE announced")
        wait_until(lambda: dovecot.messages(MAILBOX) == [], "the mailbox emptied")


def test_news_sent_in_the_same_packet_as_idles_continuation_is_not_missed(
    transactional_db, org, outsider, ms_fake, dovecot, settings, monkeypatch
):
    """A report delivered just before IDLE is announced in the same packet as IDLE's continuation
    ("+ idling", "* 1 EXISTS"); the poller must see it in its read buffer, not wait for the socket."""
    settings.ARCHIVA_IMAP_POLL_INTERVAL = 600  # a missed report would wait ten minutes
    journal, _ = set_up(org, ms_fake, dovecot)
    dovecot.deliver(MAILBOX, reports(1)[0])
    real_search = imapclient.IMAPClient.search
    searches: list[object] = []

    def search(client, *args, **kwargs):
        searches.append(args)
        if len(searches) == 2:  # the search after the first report was taken off: the race, every time
            dovecot.deliver(MAILBOX, reports(1, "Raced")[0])
        return real_search(client, *args, **kwargs)

    monkeypatch.setattr(imapclient.IMAPClient, "search", search)
    with poller_running():
        wait_until(lambda: len(deliveries(org)) == 2, "the report delivered during the search")
        wait_until(lambda: dovecot.messages(MAILBOX) == [], "the mailbox emptied")
    assert len(searches) >= 3


def test_mail_announced_by_another_command_is_not_left_waiting_for_idle(
    transactional_db, org, outsider, ms_fake, dovecot, settings, monkeypatch
):
    """A server tells of new mail once, at the end of whatever command is running (RFC 3501 7.3.1);
    IDLE does not tell again.  Here the news comes with a NOOP after the poller's empty SEARCH."""
    settings.ARCHIVA_IMAP_POLL_INTERVAL = 600
    journal, _ = set_up(org, ms_fake, dovecot)
    dovecot.deliver(MAILBOX, reports(1)[0])
    real_search = imapclient.IMAPClient.search
    searches: list[object] = []

    def search(client, *args, **kwargs):
        found = real_search(client, *args, **kwargs)
        searches.append(args)
        if len(searches) == 2:
            assert list(found) == []
            dovecot.deliver(MAILBOX, reports(1, "Announced")[0])
            _, responses = client.noop()  # the "* 1 EXISTS" is spent here, where the poller does not look
            assert any(response[1:] == (b"EXISTS",) for response in responses), responses
        return found

    monkeypatch.setattr(imapclient.IMAPClient, "search", search)
    with poller_running():
        wait_until(lambda: len(deliveries(org)) == 2, "the report announced outside IDLE")
        wait_until(lambda: dovecot.messages(MAILBOX) == [], "the mailbox emptied")


def test_a_server_without_idle_is_polled(transactional_db, org, outsider, ms_fake, settings):
    settings.ARCHIVA_IMAP_POLL_INTERVAL = 0.3
    server = Dovecot(ms_fake, idle=False).start()
    try:
        journal, _ = set_up(org, ms_fake, server)
        assert "IDLE" not in server.capabilities(MAILBOX, journal)
        server.deliver(MAILBOX, reports(1)[0])
        with poller_running():
            wait_until(lambda: len(deliveries(org)) == 1, "the first report")
            server.deliver(MAILBOX, reports(1, "Polled")[0])
            wait_until(lambda: len(deliveries(org)) == 2, "the report the next poll found")
        journal.refresh_from_db()
        assert journal.last_error == ""
    finally:
        server.stop()


@contextmanager
def poller_running() -> Iterator[Poller]:
    """The poller process's loop in a thread, stopped (and its threads joined) at the end."""
    poller = Poller()
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    try:
        yield poller
    finally:
        poller.stop.set()
        thread.join(30)
    assert not thread.is_alive()


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- the poller as a process, killed -9 -------------------------------------------------------


def poller_env(settings, **extra: str) -> dict[str, str]:
    db = db_connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        ARCHIVA_DATA_DIR=str(settings.DATA_DIR),
        ARCHIVA_MS_LOGIN_URL=settings.ARCHIVA_MS_LOGIN_URL,
        ARCHIVA_MS_GRAPH_URL=settings.ARCHIVA_MS_GRAPH_URL,
        ARCHIVA_MS_CA_BUNDLE=settings.ARCHIVA_MS_CA_BUNDLE,
        ARCHIVA_SECRETS_KEY=settings.ARCHIVA_SECRETS_KEY,
        ARCHIVA_IMAP_BATCH="7",
        ARCHIVA_IMAP_POLL_INTERVAL="0.5",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_poller(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "imap_journal"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_kill_9_of_the_poller_mid_run_loses_nothing_and_doubles_nothing(
    transactional_db, org, outsider, ms_fake, dovecot, settings, tmp_path
):
    journal, _ = set_up(org, ms_fake, dovecot)
    sent = reports(300, "Bulk")
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)
    env = poller_env(settings)
    log = tmp_path / "imap.log"

    first = start_poller(env, log)
    try:
        wait_until(lambda: len(deliveries(org)) >= 40, "the first batches", timeout=90)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    at_kill = len(deliveries(org))
    assert at_kill < len(sent), "the poller finished before it was killed: nothing was tested"

    second = start_poller(env, log)
    try:
        wait_until(lambda: dovecot.messages(MAILBOX) == [], "the mailbox emptied", timeout=120)
    finally:
        second.terminate()
        second.wait(30)
    stored = deliveries(org)
    assert len(stored) == len(sent), log.read_text()[-3000:]
    assert {d.sha256 for d in stored} == {hashlib.sha256(raw).hexdigest() for raw in sent}
    assert second.returncode == 0  # SIGTERM: a clean stop
    journal.refresh_from_db()
    assert journal.last_error == ""


def test_two_pollers_on_one_mailbox_at_once_store_each_report_once(transactional_db, org, outsider, ms_fake, dovecot):
    """Two processes on one mailbox (a deploy's overlap): the loser of each race finds the report recorded."""
    journal, _ = set_up(org, ms_fake, dovecot)
    sent = reports(40, "Raced")
    for raw in sent:
        dovecot.deliver(MAILBOX, raw)
    outcomes: list[bool] = []

    def poll() -> None:
        try:
            outcomes.append(poll_once(ImapJournal.objects.get(pk=journal.pk)))
        finally:
            db_connection.close()

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    journal.refresh_from_db()
    assert outcomes == [True, True], journal.last_error
    stored = deliveries(org)
    assert len(stored) == len(sent)
    assert {d.sha256 for d in stored} == {hashlib.sha256(raw).hexdigest() for raw in sent}
    assert dovecot.messages(MAILBOX) == []


def test_large_reports_are_read_in_batches_bounded_by_size(org, outsider, ms_fake, dovecot, monkeypatch):
    monkeypatch.setattr("imapjournal.poller.BATCH_BYTES", 150_000)
    stored_batches: list[int] = []
    real = store_reports

    def counting(journal, peer, batch):
        stored_batches.append(len(batch))
        return real(journal, peer, batch)

    monkeypatch.setattr("imapjournal.poller.store_reports", counting)
    journal, _ = set_up(org, ms_fake, dovecot)
    from tests.archive_support import padded_report

    for i in range(5):
        dovecot.deliver(MAILBOX, padded_report(f"big-{i}@contoso.com", 60_000))
    assert poll_once(journal), journal.last_error
    assert stored_batches == [2, 2, 1]  # 2 x 60 KB fit in 150 KB, a third would not
    assert len(deliveries(org)) == 5
