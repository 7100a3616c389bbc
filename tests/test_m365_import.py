"""Historical import from Microsoft 365 against the Graph fake: whole mailboxes
in nested folders into the archive, resumable, throttled, deduplicated
against journal copies, with errors per mailbox; its API, page and command."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from archive.models import Message, MessageSource
from ingest.models import Delivery
from m365 import importer
from m365.import_actions import ImportActive, ImportRefused, latest_import, pause_import, progress, resume_import
from m365.import_actions import start_import as start
from m365.importing import ImportDay, ImportMailbox, ImportRun, ImportSource
from tenants.api_tokens import create_api_token
from tenants.models import AuditEvent
from tests.archive_support import archive, backend_fixture, report, search_ids  # noqa: F401 (the fixture)
from tests.conftest import PASSWORD, membership_of
from tests.m365_import_support import archive_all, mailbox_with_mail, message_bytes, sync_mailboxes
from tests.ms_support import ALL_ROLES, connect

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[1]


def run_to_end(run_id: int, budget: float = 120.0) -> None:
    """Run the import in this process, slice after slice, as the worker's task does."""
    deadline = time.monotonic() + budget
    while importer.run_slice(run_id) is not True:
        assert time.monotonic() < deadline, "the import did not finish"


def run_in_thread(run_id: int) -> None:
    try:
        run_to_end(run_id)
    finally:
        connection.close()  # this thread's own connection, or it outlives the test database


@pytest.fixture
def connected(ms_fake, org):
    """Contoso connected to a directory of the fake; returns its directory id."""
    connection = connect(ms_fake, org.tenant)
    return str(connection.directory_id)


def signed_in(user) -> Client:
    client = Client()
    assert client.login(email=user.email, password=PASSWORD)
    return client


# --- the engine ----------------------------------------------------------------


def test_a_mailbox_of_thousands_of_messages_in_nested_folders_is_archived_whole_and_searchable_by_folder(
    ms_fake, org, connected, backend
):
    anna, placed = mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 2000)
    ms_fake.add_event(anna, {"subject": "Board meeting zeppelin", "location": {"displayName": "Room 4"}})
    ms_fake.add_contact(anna, {"displayName": "Quentin Quokka", "emailAddresses": [{"address": "q@fabrikam.com"}]})
    sync_mailboxes(ms_fake, org.tenant, connected)

    run = start(org.tenant, "all", actor=membership_of(org.owner), publish=False)
    run_to_end(run.pk)

    run.refresh_from_db()
    assert run.state == ImportRun.State.DONE
    assert run.messages_imported == 2000 and run.items_imported == 2
    sources = MessageSource.objects.filter(tenant=org.tenant, mailbox="anna@contoso.com", kind="mail")
    assert dict(sources.values_list("graph_id", "folder")) == placed
    assert archive_all(org.tenant) == 2002
    assert Message.objects.filter(tenant=org.tenant, kind="mail").count() == 2000
    assert len(search_ids(backend, org.tenant, 'folder:"Inbox/Projects/Alpha"')) == 400
    assert len(search_ids(backend, org.tenant, "zebra1234")) == 1
    assert len(search_ids(backend, org.tenant, "kind:event zeppelin")) == 1
    assert len(search_ids(backend, org.tenant, "kind:contact quokka")) == 1
    assert ImportDay.objects.get(tenant=org.tenant).messages == 2000
    # Every mailbox request asked for immutable ids, which survive a move (the folder sync relies on it).
    assert ms_fake.mutable_id_requests == []


def test_since_imports_only_mail_received_from_that_day(ms_fake, org, connected):
    # A message a minute from 2025-01-01 00:00: the last 60 of 1500 arrive on 2 January.
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 1500)
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, ["anna@contoso.com"], dt.date(2025, 1, 2), publish=False)
    run_to_end(run.pk)
    run.refresh_from_db()
    assert run.messages_imported == 60
    asked = " ".join(unquote_plus(path) for _, path in ms_fake.requests)
    assert "$filter=receivedDateTime ge 2025-01-02T00:00:00Z" in asked  # Graph filters; we check again


def test_throttling_is_honoured_and_no_mailbox_ever_has_more_than_four_requests_at_once(ms_fake, org, connected):
    users = [mailbox_with_mail(ms_fake, connected, f"u{i}@contoso.com", 150, start=i * 1000)[0] for i in range(3)]
    sync_mailboxes(ms_fake, org.tenant, connected)
    ms_fake.latency = 0.01  # long enough for requests to overlap
    run = start(org.tenant, "all", publish=False)
    ms_fake.throttle(4, retry_after=1, status=429, user=users[0])
    ms_fake.throttle(2, retry_after=1, status=503)
    began = time.monotonic()
    run_to_end(run.pk)
    assert time.monotonic() - began >= 1.0  # Retry-After waited for, not a tight loop
    run.refresh_from_db()
    assert run.state == ImportRun.State.DONE and run.messages_imported == 450
    assert not list(run.mailboxes.exclude(state=ImportMailbox.State.DONE))
    for user in users:
        assert 2 <= ms_fake.max_concurrency(user) <= 4


def test_a_journal_copy_and_the_mailbox_copy_are_one_message_with_both_sources(ms_fake, org, connected, backend):
    archive(org.tenant, report("board-42@fabrikam.com", "Board pack", [("To", "anna@contoso.com")]))
    anna = ms_fake.add_user(connected, "anna@contoso.com")
    graph_id = ms_fake.add_message(
        anna, "Inbox/Board", message_bytes(1, "anna@contoso.com", "Inbox/Board", message_id="board-42@fabrikam.com")
    )
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, "all", publish=False)
    run_to_end(run.pk)
    archive_all(org.tenant)

    [message] = Message.objects.filter(tenant=org.tenant, message_id__icontains="board-42@fabrikam.com")
    sources = {(s.mailbox, s.folder, s.graph_id) for s in MessageSource.objects.filter(message=message)}
    assert ("anna@contoso.com", "Inbox/Board", graph_id) in sources
    assert message.deliveries.count() == 2  # the journal report and the mailbox copy


def test_a_user_without_a_mailbox_is_listed_with_the_reason_while_the_others_finish(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 30)
    ms_fake.add_user(connected, "nomail@contoso.com", mailbox=None, mail="nomail@contoso.com")
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, ["anna@contoso.com", "nomail@contoso.com"], publish=False)
    run_to_end(run.pk)

    p = progress(latest_import(org.tenant))
    assert p.state == "done" and p.mailboxes_done == 1 and p.mailboxes_failed == 1 and p.messages_imported == 30
    [error] = p.errors
    assert error["mailbox"] == "nomail@contoso.com"
    assert "MailboxNotEnabledForRESTAPI" in error["reason"]


def test_a_large_message_goes_through_a_spool_file_and_arrives_intact(ms_fake, org, connected, settings):
    anna = ms_fake.add_user(connected, "anna@contoso.com")
    big = message_bytes(7, "anna@contoso.com", "Inbox", padding=3 * 1024 * 1024)
    ms_fake.add_message(anna, "Inbox", big)
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, "all", publish=False)
    run_to_end(run.pk)
    archive_all(org.tenant)
    [message] = Message.objects.filter(tenant=org.tenant)
    assert message.size == len(big)
    assert not list((settings.ARCHIVA_SPOOL_DIR / "m365").glob("*"))  # spool files taken over, none left


def test_a_paused_import_stops_and_resumes_where_it_stopped(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 450)
    sync_mailboxes(ms_fake, org.tenant, connected)
    admin = membership_of(org.admin)
    run = start(org.tenant, "all", actor=admin, publish=False)
    assert importer.run_slice(run.pk, budget=0.0) is False  # one batch, then the slice is over
    run.refresh_from_db()
    first = run.messages_imported
    assert 0 < first < 450
    assert pause_import(org.tenant, run, actor=admin)
    assert importer.run_slice(run.pk) is None  # paused: nobody runs it
    assert resume_import(org.tenant, run, actor=admin, publish=False)
    run_to_end(run.pk)
    run.refresh_from_db()
    assert run.state == ImportRun.State.DONE and run.messages_imported == 450
    assert MessageSource.objects.filter(tenant=org.tenant).count() == 450
    assert {e.action for e in AuditEvent.objects.filter(tenant=org.tenant, action__startswith="m365-import")} == {
        "m365-import-started",
        "m365-import-paused",
        "m365-import-resumed",
    }


def test_a_batch_stored_before_a_crash_saved_its_link_is_fetched_again_and_stored_once(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 500, folders=["Inbox"])
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, "all", publish=False)
    assert importer.run_slice(run.pk, budget=0.0) is False
    inbox = ImportSource.objects.get(mailbox__run=run, path="Inbox")
    assert inbox.next_link and not inbox.done
    stored = MessageSource.objects.filter(tenant=org.tenant).count()
    assert 0 < stored < 500
    # As if the worker died after store_items returned but before the link after it was saved.
    ImportSource.objects.filter(pk=inbox.pk).update(next_link="")
    run_to_end(run.pk)
    assert MessageSource.objects.filter(tenant=org.tenant).count() == 500
    assert Delivery.objects.filter(tenant=org.tenant).count() == 500
    assert ms_fake.request_count("/$value") == 500  # what was stored is not even downloaded again
    assert archive_all(org.tenant) == 500
    assert Message.objects.filter(tenant=org.tenant).count() == 500


def test_an_import_is_refused_with_a_reason(ms_fake, org, connected, outsider):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 1)
    sync_mailboxes(ms_fake, org.tenant, connected)
    with pytest.raises(ImportRefused, match="not a mailbox of this organization: bob@elsewhere.com"):
        start(org.tenant, ["bob@elsewhere.com"])
    with pytest.raises(ImportRefused, match="in the future"):
        start(org.tenant, "all", dt.date.today() + dt.timedelta(days=2))
    with pytest.raises(ImportRefused, match="not connected"):
        start(membership_of(outsider).tenant, "all")
    start(org.tenant, "all", publish=False)
    with pytest.raises(ImportActive):
        start(org.tenant, "all")


def test_an_app_without_calendar_and_contact_permissions_imports_mail_only(ms_fake, org):
    connection = connect(ms_fake, org.tenant, roles=ALL_ROLES - {"Calendars.Read", "Contacts.Read"})
    anna, _ = mailbox_with_mail(ms_fake, str(connection.directory_id), "anna@contoso.com", 5)
    ms_fake.add_event(anna, {"subject": "Offsite"})
    sync_mailboxes(ms_fake, org.tenant, str(connection.directory_id))
    run = start(org.tenant, "all", publish=False)
    run_to_end(run.pk)
    run.refresh_from_db()
    assert (run.state, run.messages_imported, run.items_imported) == ("done", 5, 0)


def test_a_certificate_the_app_does_not_know_fails_the_import_with_microsofts_reason(ms_fake, org):
    connection = connect(ms_fake, org.tenant, upload=False)
    mailbox_with_mail(ms_fake, str(connection.directory_id), "anna@contoso.com", 1)
    sync_mailboxes(ms_fake, org.tenant, str(connection.directory_id))
    run = start(org.tenant, "all", publish=False)
    run_to_end(run.pk)
    run.refresh_from_db()
    assert run.state == ImportRun.State.FAILED
    assert "AADSTS700027" in run.error


# --- API ---------------------------------------------------------------------------


def test_the_api_starts_an_import_and_reports_its_progress(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 25)
    sync_mailboxes(ms_fake, org.tenant, connected)
    admin = signed_in(org.admin)
    assert admin.get("/api/v1/m365/import").json()["state"] == "none"

    answer = admin.post("/api/v1/m365/import", {"mailboxes": "all", "since": "2024-01-01"}, "application/json")
    assert answer.status_code == 202, answer.content
    run_to_end(answer.json()["id"])

    body = admin.get("/api/v1/m365/import").json()
    assert {k: body[k] for k in ("state", "mailboxes_total", "mailboxes_done", "messages_imported", "errors")} == {
        "state": "done",
        "mailboxes_total": 1,
        "mailboxes_done": 1,
        "messages_imported": 25,
        "errors": [],
    }
    event = AuditEvent.objects.get(tenant=org.tenant, action="m365-import-started")
    assert event.actor_email == org.admin.email and event.detail["since"] == "2024-01-01"


def test_the_api_names_what_is_wrong_with_a_request(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 1)
    sync_mailboxes(ms_fake, org.tenant, connected)
    owner = signed_in(org.owner)
    cases = [
        (b"not json", "not JSON"),
        (json.dumps({"mailboxes": 5}).encode(), 'mailboxes must be "all" or a list'),
        (json.dumps({"since": "yesterday"}).encode(), "since must be a date as YYYY-MM-DD"),
        (json.dumps({"mailboxes": ["x@nowhere.com"]}).encode(), "not a mailbox of this organization"),
        (json.dumps({"mailbox": "all"}).encode(), "unknown field: mailbox"),
    ]
    for body, message in cases:
        answer = owner.post("/api/v1/m365/import", body, "application/json")
        assert answer.status_code == 400 and message in answer.json()["error"], (body, answer.content)
    assert owner.post("/api/v1/m365/import", b"{}", "application/json").status_code == 202
    again = owner.post("/api/v1/m365/import", b"{}", "application/json")
    assert again.status_code == 409 and "already in progress" in again.json()["error"]


def test_only_owners_and_admins_may_use_the_import_api_and_an_outsider_sees_only_his_own(
    ms_fake, org, connected, outsider
):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 1)
    sync_mailboxes(ms_fake, org.tenant, connected)
    start(org.tenant, "all", publish=False)
    for user in (org.auditor, org.user):
        client = signed_in(user)
        assert client.get("/api/v1/m365/import").status_code == 403
        assert client.post("/api/v1/m365/import", b"{}", "application/json").status_code == 403
    charlie = signed_in(outsider)
    assert charlie.get("/api/v1/m365/import").json()["state"] == "none"
    assert charlie.post("/api/v1/m365/import", b"{}", "application/json").status_code == 400
    assert Client().get("/api/v1/m365/import").status_code == 401


def test_an_api_token_may_start_an_import_without_csrf_but_a_session_may_not(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 1)
    sync_mailboxes(ms_fake, org.tenant, connected)
    session = Client(enforce_csrf_checks=True)
    session.login(email=org.owner.email, password=PASSWORD)
    assert session.post("/api/v1/m365/import", b"{}", "application/json").status_code == 403
    _, secret = create_api_token(membership_of(org.owner), "msp script")
    answer = Client(enforce_csrf_checks=True).post(
        "/api/v1/m365/import",
        b'{"mailboxes": ["anna@contoso.com"]}',
        "application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert answer.status_code == 202, answer.content
    assert AuditEvent.objects.get(action="m365-import-started").token is not None


# --- the page, the charts and the command ------------------------------------------------


def test_the_import_page_starts_an_import_and_shows_progress_and_errors(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 12)
    ms_fake.add_user(connected, "nomail@contoso.com", mailbox=None, mail="nomail@contoso.com")
    sync_mailboxes(ms_fake, org.tenant, connected)
    owner = signed_in(org.owner)
    assert b'id="m365-import-link"' in owner.get("/settings/m365/").content  # reached from the connection page
    page = owner.get("/settings/m365/import/")
    assert page.status_code == 200 and b'id="import-start"' in page.content and b"<script>" not in page.content

    answer = owner.post("/settings/m365/import/", {"scope": "some", "mailboxes": ["anna@contoso.com"], "since": ""})
    assert answer.status_code == 302
    run_to_end(latest_import(org.tenant).pk)
    shown = owner.get("/settings/m365/import/").content.decode()
    assert 'id="messages-imported">12<' in shown and 'id="mailboxes-done">1<' in shown
    assert 'href="/settings/m365/import/" id="import-refresh"' in shown
    assert "m365-import.js" in shown

    refused = owner.post("/settings/m365/import/", {"scope": "some", "since": ""})
    assert "Choose at least one mailbox" in refused.content.decode()


def test_the_import_page_is_for_owners_and_admins(org, outsider):
    for user in (org.auditor, org.user):
        client = signed_in(user)
        assert client.get("/settings/m365/import/").status_code == 403
        assert client.post("/settings/m365/import/pause").status_code == 403
    assert Client().get("/settings/m365/import/").status_code == 302


def test_the_page_pauses_resumes_and_cancels_an_import(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 3)
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, "all", publish=False)
    admin = signed_in(org.admin)
    assert b'id="import-pause"' in admin.get("/settings/m365/import/").content
    admin.post("/settings/m365/import/pause")
    run.refresh_from_db()
    assert run.state == ImportRun.State.PAUSED
    assert b'id="import-resume"' in admin.get("/settings/m365/import/").content
    admin.post("/settings/m365/import/resume")
    run.refresh_from_db()
    assert run.state == ImportRun.State.QUEUED
    admin.post("/settings/m365/import/cancel")
    run.refresh_from_db()
    assert run.state == ImportRun.State.FAILED and run.error == f"Cancelled by {org.admin.email}."
    assert importer.run_slice(run.pk) is None  # nobody runs a cancelled import
    assert start(org.tenant, "all", publish=False)  # and a new one may start
    actions = AuditEvent.objects.filter(tenant=org.tenant, actor_email=org.admin.email).values_list("action", flat=True)
    assert {"m365-import-paused", "m365-import-resumed", "m365-import-cancelled"} <= set(actions)


def test_a_mailbox_may_be_named_by_an_alias_and_is_imported_under_its_primary_address(ms_fake, org, connected):
    anna = ms_fake.add_user(connected, "anna@contoso.com", aliases=["a.smith@contoso.com"])
    ms_fake.add_message(anna, "Inbox", message_bytes(1, "anna@contoso.com", "Inbox"))
    sync_mailboxes(ms_fake, org.tenant, connected)
    run = start(org.tenant, ["A.Smith@contoso.com"], publish=False)
    assert list(run.mailboxes.values_list("address", flat=True)) == ["anna@contoso.com"]


def test_charts_show_import_progress_per_day(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 8)
    sync_mailboxes(ms_fake, org.tenant, connected)
    assert b"chart-m365-import" not in signed_in(org.user).get("/status/charts/").content
    run_to_end(start(org.tenant, "all", publish=False).pk)
    page = signed_in(org.user).get("/status/charts/").content.decode()
    assert "chart-m365-import" in page and "8 messages imported from Microsoft 365" in page


def test_the_command_imports_with_a_progress_bar_and_reports_status(ms_fake, org, connected):
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 40)
    ms_fake.add_user(connected, "nomail@contoso.com", mailbox=None, mail="nomail@contoso.com")
    sync_mailboxes(ms_fake, org.tenant, connected)
    out = io.StringIO()
    call_command(
        "m365_import", "--tenant", str(org.tenant.pk), "--mailboxes", "anna@contoso.com,nomail@contoso.com", stdout=out
    )
    text = out.getvalue()
    assert "[##############################] 2/2 mailboxes  40 messages" in text
    assert "nomail@contoso.com: MailboxNotEnabledForRESTAPI" in text
    status = io.StringIO()
    call_command("m365_import", "--tenant", "Contoso", "--status", stdout=status)
    assert "done; 1 of 2 mailboxes done, 1 failed; 40 messages" in status.getvalue()


def test_the_command_names_what_is_wrong(ms_fake, org, connected):
    sync_mailboxes(ms_fake, org.tenant, connected)
    with pytest.raises(CommandError, match="--tenant: no tenant named 'Nowhere'"):
        call_command("m365_import", "--tenant", "Nowhere")
    with pytest.raises(CommandError, match="--since: '2024-13-01' is not a date"):
        call_command("m365_import", "--tenant", "Contoso", "--since", "2024-13-01")
    with pytest.raises(CommandError, match="no mailboxes are known yet"):
        call_command("m365_import", "--tenant", "Contoso")
    with pytest.raises(CommandError, match="no import in progress"):
        call_command("m365_import", "--tenant", "Contoso", "--resume")


# --- a real worker, killed mid-import ---------------------------------------------------


def start_worker(settings, fake, broker_url: str, log) -> subprocess.Popen:
    """A real Celery worker (threads, as the import and the archiving run side by side) on this test's database."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        ARCHIVA_DATA_DIR=str(settings.DATA_DIR),
        CELERY_BROKER_URL=broker_url,
        ARCHIVA_MS_LOGIN_URL=fake.url,
        ARCHIVA_MS_GRAPH_URL=fake.url,
        ARCHIVA_MS_CA_BUNDLE=str(fake.ca_path),
        ARCHIVA_M365_IMPORT_STALE="3",
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "celery", "-A", "archiva", "worker", "--pool", "threads", "-c", "4", "-l", "info"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_until(condition, timeout: float, what: str, log=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}" + (f"; worker log:\n{log.read_text()[-3000:]}" if log else "")
            )
        time.sleep(0.2)


@pytest.mark.slow
def test_an_import_goes_on_after_its_worker_is_killed_without_loss_or_duplicates(
    ms_fake, org, connected, settings, redis_broker, tmp_path
):
    placed = {}
    for i in range(2):
        placed.update(mailbox_with_mail(ms_fake, connected, f"u{i}@contoso.com", 600, start=i * 1000)[1])
    sync_mailboxes(ms_fake, org.tenant, connected)
    ms_fake.latency = 0.01  # so that the kill lands mid-import
    log = tmp_path / "worker.log"
    first = start_worker(settings, ms_fake, redis_broker, log)
    second = None
    try:
        run = start(org.tenant, "all", actor=membership_of(org.owner))  # published to the worker
        wait_until(lambda: ImportRun.objects.get(pk=run.pk).messages_imported >= 300, 90, "the first batches", log)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = ImportRun.objects.get(pk=run.pk)
        assert killed_at.state == ImportRun.State.RUNNING and killed_at.messages_imported < 1200

        second = start_worker(settings, ms_fake, redis_broker, log)  # takes over once the heartbeat is stale
        wait_until(lambda: ImportRun.objects.get(pk=run.pk).state == ImportRun.State.DONE, 120, "the import", log)
    finally:
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(30)
    sources = MessageSource.objects.filter(tenant=org.tenant, kind="mail")
    assert dict(sources.values_list("graph_id", "folder")) == placed  # nothing lost
    assert sources.count() == 1200 and Delivery.objects.filter(tenant=org.tenant).count() == 1200  # nothing twice
    archive_all(org.tenant)  # what the killed worker had not archived yet (the sweep would, later)
    assert Message.objects.filter(tenant=org.tenant).count() == 1200


def test_an_admin_starts_an_import_in_chromium_and_watches_the_progress_move(
    page, shots, live_server, ms_fake, org, connected
):
    """The page as an admin uses it: choose, start, and the numbers move by themselves (JS polling the API)."""
    mailbox_with_mail(ms_fake, connected, "anna@contoso.com", 300)
    mailbox_with_mail(ms_fake, connected, "ben@contoso.com", 300, start=1000)
    sync_mailboxes(ms_fake, org.tenant, connected)
    page.goto("/accounts/login/")
    page.fill("#id_login", org.owner.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/status/")
    page.goto("/settings/m365/import/")
    shots(page, "form")
    page.check("input[name=scope][value=all]")
    page.click("#import-start")
    page.wait_for_selector("#import-progress")
    assert page.inner_text("#import-state") == "queued"

    ms_fake.latency = 0.005  # long enough to watch
    runner = threading.Thread(target=run_in_thread, args=(latest_import(org.tenant).pk,))
    runner.start()
    try:
        # The page's script polls the API: the count moves without a reload (evaluated here: the CSP forbids eval).
        wait_until(lambda: page.inner_text("#messages-imported") not in ("0", ""), 30, "the count to move")
        shots(page, "moving")
    finally:
        runner.join(120)
    # Done: the script sees the state change and reloads, so the form for a new import is back.
    page.wait_for_selector("#import-form", timeout=20_000)
    assert page.inner_text("#import-state") == "done"
    assert page.inner_text("#messages-imported") == "600"
    assert page.inner_text("#mailboxes-done") == "2"
    shots(page, "done")
    assert page.console_errors == []  # no CSP violation, no script error


def test_an_import_is_run_by_one_worker_at_a_time_and_taken_over_once_its_heartbeat_is_stale(org, settings):
    from m365.models import Connection

    Connection.objects.create(tenant=org.tenant)
    run = ImportRun.objects.create(tenant=org.tenant)
    assert importer.claim(run.pk, "worker-a") is not None
    assert importer.claim(run.pk, "worker-b") is None  # worker-a is alive
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.ARCHIVA_M365_IMPORT_STALE + 1)
    ImportRun.objects.filter(pk=run.pk).update(heartbeat_at=stale)
    taken = importer.claim(run.pk, "worker-b")
    assert taken is not None and taken.owner == "worker-b"
    ImportRun.objects.filter(pk=run.pk).update(state=ImportRun.State.PAUSED, heartbeat_at=None)
    assert importer.claim(run.pk, "worker-c") is None  # paused: nobody runs it


def test_a_download_stays_in_memory_while_small_and_goes_to_a_spool_file_when_large(tmp_path):
    from m365.spool import Spool

    small = Spool(tmp_path, threshold=1024)
    small.write(b"x" * 1000)
    assert small.content() == b"x" * 1000 and not list(tmp_path.iterdir())
    large = Spool(tmp_path, threshold=1024)
    for _ in range(64):
        large.write(b"y" * 1000)
    path = large.content()
    assert isinstance(path, Path) and path.read_bytes() == b"y" * 64000
    assert large._memory.getbuffer().nbytes == 0  # nothing kept in memory once on disk
    assert large.sha256 == hashlib.sha256(b"y" * 64000).hexdigest()
    discarded = Spool(tmp_path, threshold=10)
    discarded.write(b"z" * 100)
    discarded.discard()
    assert list(tmp_path.iterdir()) == [path]


def test_spool_files_a_killed_worker_left_are_removed_when_an_import_next_runs(tmp_path):
    old, fresh = tmp_path / "m365-old.eml", tmp_path / "m365-fresh.eml"
    old.write_bytes(b"left behind")
    fresh.write_bytes(b"being written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert importer.remove_orphans(tmp_path) == 1
    assert not old.exists() and fresh.exists()
