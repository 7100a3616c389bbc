"""Retention and legal hold: a policy previewed, approved by a second person
and delayed, then applied by the daily run: expired, unheld messages leave
the index, the database and the bucket; held and unexpired ones stay.

Real PostgreSQL, the real folder store, both search engines (embedded and
the Elasticsearch API) wherever a query decides.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from archive import documents
from archive.models import Message, MessageSource
from archive.processing import process_deliveries
from compliance import holds, purge, retention
from compliance.models import PendingPurge, RetentionChange
from compliance.periods import PeriodError, parse_period
from infra.storage import get_store
from ingest.directory import Route
from ingest.models import Delivery
from ingest.record import Envelope, Job, commit_batch, flush_paths
from search import Scope, get_backend, reset_backend
from tenants.audit import SYSTEM_ACTOR
from tenants.models import AuditEvent
from tests.conftest import PASSWORD, membership_of
from tests.search_support import elasticsearch_url  # noqa: F401 - the session's Elasticsearch API

NOW = timezone.now()


@pytest.fixture(params=["embedded", "elasticsearch"])
def search_engine(request, settings):
    """The worker's search backend: the embedded default, or Elasticsearch (an index of this test's own)."""
    if request.param == "elasticsearch":
        settings.ARCHIVA_SEARCH_URL = request.getfixturevalue("elasticsearch_url")
        settings.ARCHIVA_SEARCH_INDEX = f"archiva-test-retention-{uuid.uuid4().hex[:10]}-messages"
        settings.ARCHIVA_SEARCH_REFRESH = "wait_for"
    reset_backend()
    backend = get_backend()
    yield backend
    if request.param == "elasticsearch":
        backend.drop_index()  # type: ignore[attr-defined]  # the Elasticsearch backend's own, not the interface's
    reset_backend()


def report(subject: str, date: datetime, sender: str = "sam@fabrikam.com", to: str = "erin@contoso.com") -> bytes:
    """A journal report, as Exchange sends it, of an original dated `date`."""
    mid = f"<{uuid.uuid4().hex}@fabrikam.com>"
    original = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\nMessage-ID: {mid}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\nAbout {subject}.\r\n"
    )
    return (
        f"From: {sender}\r\nTo: journal@archive.archiva.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@journal.report.generator>\r\nX-MS-Journal-Report:\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\nMIME-Version: 1.0\r\n\r\n'
        "--b0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"Sender: {sender}\r\nSubject: {subject}\r\nMessage-Id: {mid}\r\nTo: {to}\r\n"
        f"--b0\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--b0--\r\n"
    ).encode()


def archive_together(tenant, raws: list[bytes]) -> list[Message]:
    """Received in one commit batch (one pack), archived and indexed by the worker's path."""
    envelope = Envelope(mail_from="journal@contoso.com", peer_ip="127.0.0.1", helo="t", tls_version="", tls_cipher="")
    envelope.add_recipient(Route(tenant.pk, tenant.bucket, tenant.region, None), "journal-x@us.test")
    jobs = [Job(n, envelope, raw, hashlib.sha256(raw).hexdigest(), len(raw)) for n, raw in enumerate(raws)]
    results, ids = commit_batch(jobs, flush_paths())
    assert all(error is None for _, error in results), results
    outcome = process_deliveries(ids, index=True)
    assert not outcome.troubled, outcome.troubled
    get_backend().refresh()
    deliveries = Delivery.objects.filter(pk__in=ids).order_by("pk")
    return [Message.objects.get(pk=d.message_id) for d in deliveries]


def archive_one(tenant, subject: str, age: timedelta, **kw: str) -> Message:
    [message] = archive_together(tenant, [report(subject, NOW - age, **kw)])
    return message


def objects_of(message: Message) -> list[str]:
    """The distinct bucket objects the message uses: its report's pack and the
    worker's pack of its original and text (one object for both)."""
    keys = {message.original_key, message.text_key}
    keys.update(Delivery.objects.filter(message=message).values_list("storage_key", flat=True))
    return sorted(keys)


def in_bucket(tenant, key: str) -> bool:
    return get_store().exists(tenant.bucket, key)


def found(tenant, query: str = "") -> set[int]:
    get_backend().refresh()
    return set(get_backend().scan(Scope(tenant.pk, None), query))


def set_policy(org, default: str, rules: list[dict[str, str]] | None = None) -> None:
    """Put a policy in force as the product does: proposed by alice, approved by bob (no delay in tests)."""
    policy = retention.read_policy(default, rules or [])
    change = retention.propose(membership_of(org.owner), policy)
    if change.state != RetentionChange.State.APPLIED:
        retention.approve(membership_of(org.admin), change)


DAY = timedelta(days=1)


# --- periods and the policy itself --------------------------------------------------


def test_periods_are_read_and_compared_in_calendar_terms():
    assert str(parse_period(" 7Y ")) == "7y"
    assert parse_period("forever").forever
    assert parse_period("12m").at_least(parse_period("1y")) and parse_period("1y").at_least(parse_period("12m"))
    assert parse_period("1y").at_least(parse_period("360d")) and not parse_period("1y").at_least(parse_period("370d"))
    assert parse_period("7y").cutoff(datetime(2026, 2, 28, tzinfo=UTC)) == datetime(2019, 2, 28, tzinfo=UTC)
    for wrong in ("", "7", "0d", "7 weeks", "500y", None):
        with pytest.raises(PeriodError):
            parse_period(wrong)


def test_a_policy_with_a_bad_query_or_period_is_refused_with_a_message():
    with pytest.raises(retention.RetentionError, match="Rule 1"):
        retention.read_policy("7y", [{"query": "from:(alice", "period": "30d"}])
    with pytest.raises(retention.RetentionError, match="Rule 2: .*period"):
        retention.read_policy("7y", [{"query": "a", "period": "1y"}, {"query": "b", "period": "soon"}])
    with pytest.raises(retention.RetentionError, match="Default period"):
        retention.read_policy("tomorrow", [])


def test_only_changes_that_keep_mail_longer_skip_approval():
    read = retention.read_policy
    base = read("1y", [{"query": "folder:Junk", "period": "30d"}])
    assert retention.only_lengthens(base, read("2y", [{"query": "folder:Junk", "period": "60d"}]))
    assert retention.only_lengthens(
        base, read("1y", [{"query": "folder:Junk", "period": "30d"}, {"query": "x", "period": "5y"}])
    )
    assert not retention.only_lengthens(base, read("6m", [{"query": "folder:Junk", "period": "30d"}]))
    assert not retention.only_lengthens(base, read("1y", []))  # a rule removed
    assert not retention.only_lengthens(
        base, read("1y", [{"query": "x", "period": "5y"}, {"query": "folder:Junk", "period": "30d"}])
    )
    assert not retention.only_lengthens(
        base, read("1y", [{"query": "folder:Junk", "period": "30d"}, {"query": "x", "period": "7d"}])
    )


@pytest.mark.django_db
def test_shortening_needs_another_admin_and_waits_the_delay(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 7 * 24 * 3600
    alice, bob = membership_of(org.owner), membership_of(org.admin)
    change = retention.propose(alice, retention.read_policy("7y", [{"query": "folder:Junk", "period": "30d"}]))
    assert change.state == RetentionChange.State.PENDING  # from "forever": shorter
    assert retention.policy_in_force(org.tenant).default.forever

    with pytest.raises(retention.RetentionError, match="another owner or admin"):
        retention.approve(alice, change)
    with pytest.raises(retention.RetentionError, match="owners and admins"):
        retention.approve(membership_of(org.auditor), change)
    approved = retention.approve(bob, change, now=NOW)
    assert approved.effective_at == NOW + timedelta(days=7)

    assert retention.policy_in_force(org.tenant, NOW + timedelta(days=6)).default.forever
    in_force = retention.policy_in_force(org.tenant, NOW + timedelta(days=7, seconds=1))
    assert str(in_force.default) == "7y" and in_force.rules[0].query == "folder:Junk"

    actions = list(
        AuditEvent.objects.filter(tenant=org.tenant, target="retention")
        .order_by("pk")
        .values_list("action", "actor_email")
    )
    assert actions == [
        (AuditEvent.Action.RETENTION_PROPOSED, "alice@contoso.com"),
        (AuditEvent.Action.RETENTION_APPROVED, "bob@contoso.com"),
        (AuditEvent.Action.RETENTION_CHANGED, SYSTEM_ACTOR),  # brought into force by Archiva, at its date
    ]


@pytest.mark.django_db
def test_a_longer_period_is_in_force_at_once_and_a_new_proposal_replaces_waiting_ones(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    set_policy(org, "1y")
    alice = membership_of(org.owner)
    waiting = retention.propose(alice, retention.read_policy("30d", []))
    assert waiting.state == RetentionChange.State.PENDING
    longer = retention.propose(alice, retention.read_policy("2y", []))
    assert longer.state == RetentionChange.State.APPLIED
    waiting.refresh_from_db()
    assert waiting.state == RetentionChange.State.CANCELLED
    assert str(retention.policy_in_force(org.tenant).default) == "2y"


# --- preview and the run ----------------------------------------------------------


@pytest.mark.django_db
def test_preview_counts_what_each_rule_would_delete_now(org, search_engine, settings):
    tenant = org.tenant
    archive_one(tenant, "newsletter march", 60 * DAY)
    archive_one(tenant, "newsletter may", 10 * DAY)
    archive_one(tenant, "pay review", 3 * 365 * DAY, sender="hr@contoso.com")
    archive_one(tenant, "old project", 800 * DAY)
    held = archive_one(tenant, "old contract", 900 * DAY)
    archive_one(tenant, "new project", 30 * DAY)
    holds.create_hold(membership_of(org.owner), name="Case 7", reason="litigation", query="contract")
    policy = retention.read_policy(
        "2y", [{"query": "subject:newsletter", "period": "30d"}, {"query": "from:hr@contoso.com", "period": "10y"}]
    )
    outcome = purge.preview(tenant, policy)
    assert outcome.by_rule == {"rule 1": 1, "rule 2": 0, "default": 1}
    assert (outcome.deleted, outcome.held) == (2, 1)
    assert Message.objects.filter(tenant=tenant).count() == 6  # a preview deletes nothing
    assert held.pk in found(tenant)


@pytest.mark.django_db
def test_the_run_deletes_expired_unheld_mail_everywhere_and_keeps_the_rest(org, outsider, search_engine, settings):
    tenant = org.tenant
    settings.ARCHIVA_RETENTION_DELAY = 0
    expired = archive_one(tenant, "old plans", 400 * DAY)
    expired_objects = objects_of(expired)
    recent = archive_one(tenant, "recent plans", 100 * DAY)
    by_custodian = archive_one(tenant, "old memo", 500 * DAY, to="frank@contoso.com")
    by_query = archive_one(tenant, "old merger talks", 600 * DAY)
    released = archive_one(tenant, "old gossip", 700 * DAY)
    alice = membership_of(org.owner)
    holds.create_hold(alice, name="Frank", reason="departure review", custodians=["Frank@contoso.com"])
    holds.create_hold(alice, name="Merger", reason="regulator", query="subject:merger")
    gossip = holds.create_hold(alice, name="Gossip", reason="HR", query="gossip")
    holds.release_hold(alice, gossip)
    set_policy(org, "1y")
    outsiders = archive_one(membership_of(outsider).tenant, "old plans of theirs", 400 * DAY)

    outcome = purge.run(tenant, now=timezone.now())

    assert (outcome.deleted, outcome.held, outcome.expired) == (2, 2, 4)
    left = set(Message.objects.filter(tenant=tenant).values_list("pk", flat=True))
    assert left == {recent.pk, by_custodian.pk, by_query.pk}
    assert not Delivery.objects.filter(message_id__in=[expired.pk, released.pk]).exists()
    assert not Delivery.objects.filter(tenant=tenant, message__isnull=True).exists()
    assert found(tenant) == left
    for key in expired_objects:
        assert not in_bucket(tenant, key), key
    for kept in (recent, by_custodian, by_query):
        assert all(in_bucket(tenant, key) for key in objects_of(kept))
    assert not PendingPurge.objects.filter(tenant=tenant).exists()
    assert Message.objects.filter(pk=outsiders.pk).exists()  # another tenant's old mail is theirs to keep
    event = AuditEvent.objects.filter(tenant=tenant, action=AuditEvent.Action.RETENTION_APPLIED).get()
    assert event.detail["deleted"] == 2 and event.detail["held"] == 2 and event.detail["by_rule"] == {"default": 2}
    assert event.detail["objects_deleted"] == len(expired_objects) * 2


@pytest.mark.django_db
def test_rules_apply_in_order_the_first_match_setting_the_period(org, search_engine, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    junk_hr = archive_one(tenant, "junk offer", 60 * DAY, sender="hr@contoso.com")
    junk = archive_one(tenant, "junk offer two", 60 * DAY)
    set_policy(org, "forever", [{"query": "from:hr@contoso.com", "period": "10y"}, {"query": "junk", "period": "30d"}])
    outcome = purge.run(tenant)
    assert outcome.by_rule == {"rule 1": 0, "rule 2": 1}
    assert set(Message.objects.filter(tenant=tenant).values_list("pk", flat=True)) == {junk_hr.pk}
    assert junk.pk not in found(tenant)


@pytest.mark.django_db
def test_a_mailbox_copy_goes_with_its_message(org, settings):
    from archive.items import Item, store_items

    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    raw = (
        f"From: sam@fabrikam.com\r\nTo: erin@contoso.com\r\nSubject: filed away\r\n"
        f"Date: {(NOW - 400 * DAY).strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\nMessage-ID: <filed@fabrikam.com>\r\n"
        "Content-Type: text/plain\r\n\r\nHi.\r\n"
    ).encode()
    queue_ids = store_items(
        tenant, [Item(kind="mail", mailbox="erin@contoso.com", folder="Inbox", graph_id="AAA1", content=raw)]
    )
    ids = list(Delivery.objects.filter(tenant=tenant, queue_id__in=queue_ids).values_list("pk", flat=True))
    process_deliveries(ids, index=True)
    assert MessageSource.objects.filter(tenant=tenant).exists()
    set_policy(org, "1y")
    assert purge.run(tenant).deleted == 1
    assert not MessageSource.objects.filter(tenant=tenant).exists()
    assert not Message.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_a_pack_stays_until_its_last_report_expires(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    older, newer = archive_together(
        tenant, [report("pack older", NOW - 500 * DAY), report("pack newer", NOW - 200 * DAY)]
    )
    [pack] = set(Delivery.objects.filter(message__in=[older, newer]).values_list("storage_key", flat=True))
    assert pack.startswith("pack/")
    # The worker's pack: both originals and both texts, archived in one batch.
    [archived] = {older.original_key, older.text_key, newer.original_key, newer.text_key}
    assert archived.startswith("pack/") and archived != pack
    set_policy(org, "1y")
    purge.run(tenant)
    assert in_bucket(tenant, pack)  # the newer report still lives in it
    assert in_bucket(tenant, archived)  # and the newer original and text
    assert not Message.objects.filter(pk=older.pk).exists()
    assert b"pack newer" in Delivery.objects.get(message=newer).read_report()  # still read from the pack
    assert b"pack newer" in documents.read_original(Message.objects.select_related("tenant").get(pk=newer.pk))
    purge.run(tenant, now=NOW + 200 * DAY)
    assert not in_bucket(tenant, pack) and not in_bucket(tenant, archived)
    assert not Message.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    old = archive_one(tenant, "old", 400 * DAY)
    set_policy(org, "1y")
    from io import StringIO

    out = StringIO()
    call_command("apply_retention", "--tenant", str(tenant.public_id), "--dry-run", stdout=out)
    assert "would delete 1 (default: 1)" in out.getvalue()
    assert "Checking retention in Contoso [" in out.getvalue()  # the progress bar
    assert Message.objects.filter(pk=old.pk).exists() and all(in_bucket(tenant, k) for k in objects_of(old))
    assert old.pk in found(tenant)
    event = AuditEvent.objects.get(tenant=tenant, action=AuditEvent.Action.RETENTION_APPLIED)
    assert event.detail["dry_run"] is True and event.detail["deleted"] == 1

    call_command("apply_retention", "--tenant", "Contoso", stdout=out)
    assert not Message.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_apply_retention_names_an_unknown_tenant():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no tenant named 'Nowhere'"):
        call_command("apply_retention", "--tenant", "Nowhere")


@pytest.mark.django_db
def test_an_unindexed_message_waits_for_the_index(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    old = archive_one(tenant, "old", 400 * DAY)
    Message.objects.filter(pk=old.pk).update(index_status=Message.IndexStatus.PENDING)  # merged since: not current
    set_policy(org, "1y")
    outcome = purge.run(tenant)
    assert (outcome.deleted, outcome.waiting) == (0, 1)
    assert Message.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_the_daily_task_is_in_the_beat_schedule_and_runs_every_tenant(org, settings):
    from archiva.celery import app
    from compliance.tasks import apply_retention

    app.loader.import_default_modules()
    app.finalize()
    assert "compliance.tasks.apply_retention" in {e["task"] for e in app.conf.beat_schedule.values()}
    settings.ARCHIVA_RETENTION_DELAY = 0
    archive_one(org.tenant, "old", 400 * DAY)
    set_policy(org, "1y")
    assert apply_retention() == 1


# --- the pages and the API ----------------------------------------------------------


def client_for(user) -> Client:
    client = Client()
    assert client.login(email=user.email, password=PASSWORD)
    return client


@pytest.mark.django_db
def test_retention_api_and_page_are_for_owners_and_admins(org, outsider, settings):
    settings.ARCHIVA_RETENTION_DELAY = 0
    url = reverse("api-retention")
    for user in (org.auditor, org.user):
        assert client_for(user).get(url).status_code == 403
        assert client_for(user).get(reverse("retention")).status_code == 403
    alice, bob = client_for(org.owner), client_for(org.admin)
    assert alice.get(url).json()["default_period"] == "forever"

    body = {"default_period": "7y", "rules": [{"query": "folder:Junk", "period": "30d"}]}
    preview = alice.put(url, {**body, "preview": True}, content_type="application/json").json()["preview"]
    assert preview["rules"][0] == {"rule": 1, "query": "folder:Junk", "period": "30d", "would_delete": 0}
    proposed = alice.put(url, body, content_type="application/json")
    assert proposed.status_code == 202
    change_id = proposed.json()["change"]["id"]
    approve = reverse("api-retention-change", args=[change_id, "approve"])
    assert alice.post(approve).status_code == 409  # not by the one who proposed it
    assert client_for(outsider).post(approve).status_code == 404
    assert bob.post(approve).json()["state"] == "applied"
    assert alice.get(url).json()["rules"] == body["rules"]

    bad = alice.put(url, {"default_period": "7 years"}, content_type="application/json")
    assert bad.status_code == 400 and "period" in bad.json()["error"]
    page = alice.get(reverse("retention"))
    assert page.status_code == 200 and b"folder:Junk" in page.content


@pytest.mark.django_db
def test_the_retention_page_previews_then_proposes(org, settings):
    alice = client_for(org.owner)
    data = {"default_period": "1y", "rules": "30d subject:newsletter"}
    page = alice.post(reverse("retention"), {**data, "action": "preview"})
    assert b'id="retention-preview"' in page.content
    assert not RetentionChange.objects.filter(tenant=org.tenant).exists()
    alice.post(reverse("retention"), {**data, "action": "save"})
    change = RetentionChange.objects.get(tenant=org.tenant)
    assert change.state == RetentionChange.State.PENDING and change.rules == [
        {"query": "subject:newsletter", "period": "30d"}
    ]
    bad = alice.post(reverse("retention"), {"default_period": "1y", "rules": "subject:newsletter", "action": "save"})
    assert b"Rule 1" in bad.content


@pytest.mark.django_db
def test_holds_api_admins_place_and_release_auditors_read_users_nothing(org, outsider):
    url = reverse("api-holds")
    alice = client_for(org.owner)
    made = alice.post(
        url,
        json.dumps(
            {"name": "Case 9", "reason": "subpoena", "custodians": ["erin@contoso.com"], "owner": "bob@contoso.com"}
        ),
        content_type="application/json",
    )
    assert made.status_code == 201 and made.json()["owner"] == "bob@contoso.com"
    hold_id = made.json()["id"]
    auditor = client_for(org.auditor)
    assert [h["name"] for h in auditor.get(url).json()["holds"]] == ["Case 9"]
    assert auditor.post(url, "{}", content_type="application/json").status_code == 403
    assert auditor.post(reverse("api-hold-action", args=[hold_id, "release"])).status_code == 403
    assert client_for(org.user).get(url).status_code == 403
    assert client_for(org.user).get(reverse("holds")).status_code == 403
    charlie = client_for(outsider)
    assert charlie.get(url).json()["holds"] == []
    assert charlie.get(reverse("api-hold", args=[hold_id])).status_code == 404
    assert charlie.post(reverse("api-hold-action", args=[hold_id, "release"])).status_code == 404

    bad = alice.post(url, json.dumps({"name": "x", "reason": "y"}), content_type="application/json")
    assert bad.status_code == 400 and "query, custodians" in bad.json()["error"]
    bad = alice.post(
        url, json.dumps({"name": "x", "reason": "y", "custodians": "not an address"}), content_type="application/json"
    )
    assert bad.status_code == 400

    released = alice.post(reverse("api-hold-action", args=[hold_id, "release"]))
    assert released.json()["released_by"] == "alice@contoso.com"
    assert alice.post(reverse("api-hold-action", args=[hold_id, "release"])).status_code == 409
    actions = AuditEvent.objects.filter(tenant=org.tenant, target="Case 9").values_list("action", flat=True)
    assert sorted(actions) == [AuditEvent.Action.HOLD_CREATED, AuditEvent.Action.HOLD_RELEASED]
    assert auditor.get(reverse("holds")).status_code == 200


@pytest.mark.django_db
def test_the_message_page_shows_its_holds_to_those_who_see_all_mail(org, search_engine):
    message = archive_one(org.tenant, "board minutes", 10 * DAY)
    holds.create_hold(membership_of(org.owner), name="Board inquiry", reason="audit", query="minutes")
    holds.create_hold(membership_of(org.owner), name="Other matter", reason="x", query="unrelated")
    page = client_for(org.auditor).get(reverse("message", args=[message.pk]))
    assert b"Board inquiry" in page.content and b"Other matter" not in page.content
    mine = client_for(org.user).get(reverse("message", args=[message.pk]))
    assert mine.status_code == 200 and b"Board inquiry" not in mine.content


# --- nothing else deletes archived mail ---------------------------------------------

SOURCE_DIRS = ("archiva", "archive", "compliance", "infra", "ingest", "m365", "regions", "search", "tenants", "web")


def _calls(name: str) -> list[str]:
    """Where the project's code (not tests, not migrations) calls something named `name`, as "path:line"."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for package in SOURCE_DIRS:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                    found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return found


def _files(calls: list[str]) -> set[str]:
    return {call.split(":")[0] for call in calls}


def test_only_retention_deletes_archived_mail_and_it_checks_holds_first():
    """Every delete in the code base, by what it deletes: rows of the archive
    only in `archive.actions.purge_messages`, which only the purge calls (in
    the transaction that found no hold); objects only there and for the
    holding bucket of mail no tenant owns yet; index entries only there."""
    assert _files(_calls("purge_messages")) == {"compliance/purge.py"}
    assert _files(_calls("purge")) <= {"compliance/purge.py", "infra/storage.py"}
    # `delete(` of querysets, stores and backends: each place is named and has a reason.
    allowed = {
        "archive/actions.py",  # purge_messages (rows of deleted messages)
        "compliance/exports.py",  # export files past their 7 days (copies, in the exports bucket, not mail)
        "compliance/purge.py",  # index entries and PendingPurge rows after the purge
        "compliance/worm.py",  # HeldObject rows: the record of S3 legal holds, not mail
        "ingest/held.py",  # mail for no tenant yet (holding bucket), never archived mail
        "ingest/management/commands/update_sender_networks.py",  # the SMTP allow-list
        "m365/notifications.py",  # processed Graph notifications after 30 days (bookkeeping, not mail)
        "m365/subscriptions.py",  # Graph subscriptions at Microsoft (DELETE /subscriptions/<id>)
        "infra/storage.py",  # the stores' own delete and purge
        "search/backends/elastic.py",  # dropping a whole index (tests, upgrades)
        "tenants/actions.py",  # invitations, members, aliases, domains
    }
    assert _files(_calls("delete")) <= allowed, _files(_calls("delete")) - allowed
    assert _files(_calls("delete_tenant")) <= {"archive/management/commands/reindex.py"}  # rebuilt at once


@pytest.mark.django_db
def test_a_run_cut_short_after_commit_is_finished_by_the_next(org, settings):
    """The rows go in one transaction with the record of what is left to
    remove; a crash before the index and bucket are done loses nothing."""
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    old = archive_one(tenant, "old", 400 * DAY)
    keys = objects_of(old)
    set_policy(org, "1y")
    [selection] = purge.selections(retention.policy_in_force(tenant), timezone.now())
    purge._decide(tenant, selection, [old.pk], purge.Outcome(tenant, False), dry_run=False)  # then "crash"
    assert not Message.objects.filter(pk=old.pk).exists()
    assert old.pk in found(tenant) and all(in_bucket(tenant, key) for key in keys)
    assert PendingPurge.objects.filter(tenant=tenant).count() == 1 + len(set(keys))

    outcome = purge.run(tenant)  # the next run
    assert outcome.index_deleted == 1 and outcome.objects_deleted == len(set(keys))
    assert old.pk not in found(tenant) and not any(in_bucket(tenant, key) for key in keys)
    assert not PendingPurge.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_a_second_admin_approves_on_the_page(org, settings):
    settings.ARCHIVA_RETENTION_DELAY = 3600
    change = retention.propose(membership_of(org.owner), retention.read_policy("1y", []))
    alice_page = client_for(org.owner).get(reverse("retention"))
    assert b"awaiting approval" in alice_page.content
    assert reverse("retention-change", args=[change.pk, "approve"]).encode() not in alice_page.content
    assert client_for(org.auditor).post(reverse("retention-change", args=[change.pk, "approve"])).status_code == 403
    client_for(org.admin).post(reverse("retention-change", args=[change.pk, "approve"]))
    change.refresh_from_db()
    assert change.state == RetentionChange.State.APPROVED and change.approved_by_email == "bob@contoso.com"
    assert b"in force from" in client_for(org.owner).get(reverse("retention")).content


@pytest.mark.django_db
def test_a_hold_on_a_member_keeps_their_mail_under_every_address(org, settings):
    from tenants.actions import add_alias

    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    erin = membership_of(org.user)
    add_alias(membership_of(org.owner), erin, "sales@contoso.com")
    to_alias = archive_one(tenant, "old quote", 400 * DAY, to="sales@contoso.com")
    to_other = archive_one(tenant, "old note", 400 * DAY, to="frank@contoso.com")
    holds.create_hold(membership_of(org.owner), name="Erin", reason="dispute", custodians=["erin@contoso.com"])
    set_policy(org, "1y")
    assert purge.run(tenant).deleted == 1
    assert set(Message.objects.filter(tenant=tenant).values_list("pk", flat=True)) == {to_alias.pk}
    assert not Message.objects.filter(pk=to_other.pk).exists()


@pytest.mark.django_db
def test_an_api_token_acts_with_its_members_role_and_outsiders_reach_nothing(org, outsider):
    from tenants.api_tokens import create_api_token

    hold = holds.create_hold(membership_of(org.owner), name="Case 1", reason="r", query="x")
    change = retention.propose(membership_of(org.owner), retention.read_policy("1y", []))
    _, admin_secret = create_api_token(membership_of(org.admin), "script")
    _, auditor_secret = create_api_token(membership_of(org.auditor), "export script")
    as_admin = {"HTTP_AUTHORIZATION": f"Bearer {admin_secret}"}
    as_auditor = {"HTTP_AUTHORIZATION": f"Bearer {auditor_secret}"}
    client = Client()
    approve = reverse("api-retention-change", args=[change.pk, "approve"])
    assert client.post(approve, **as_auditor).status_code == 403
    assert client.post(approve, **as_admin).json()["approved_by"] == "bob@contoso.com"  # no CSRF for a token
    assert client.get(reverse("api-holds"), **as_auditor).json()["holds"][0]["name"] == "Case 1"
    assert client.get(reverse("api-retention"), HTTP_AUTHORIZATION="Bearer wrong").status_code == 401

    charlie = client_for(outsider)
    assert charlie.post(reverse("hold-release", args=[hold.pk])).status_code == 404
    assert charlie.post(reverse("retention-change", args=[change.pk, "cancel"])).status_code == 404
    assert holds.hold_for(org.tenant, hold.pk).active
    assert RetentionChange.objects.get(pk=change.pk).state == RetentionChange.State.APPROVED
