"""The audit log is a hash chain per tenant: each event carries the previous
event's hash and its own, so an edited, removed or inserted row is named by
`manage.py verify_audit` and on System Status; writers of one tenant take
turns on the chain head and never fork it; the daily task records a root
per tenant per day and verifies the chain."""

from __future__ import annotations

import datetime as dt
import io
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from tenants import audit, audit_chain
from tenants.actions import add_domain
from tenants.api_tokens import create_api_token
from tenants.models import AuditChain, AuditEvent, AuditRoot, Membership
from tenants.tasks import audit_daily, link_audit_events
from tests.conftest import make_org, membership_of

Action = AuditEvent.Action


def write_events(member: Membership, n: int) -> list[AuditEvent]:
    """Searches and views with varied detail (unicode, nesting, IPv6), as the web layer records them,
    then linked as their commits would have them linked (a test's transaction never commits)."""
    events = []
    for i in range(n):
        detail = {"query": f"from:sam@fabrikam.com Ünïcødé {i}", "page": i % 3 + 1, "nested": {"ids": [i, i + 1]}}
        ip = "2001:0db8:0000::0001" if i % 2 else "198.51.100.7"
        action = Action.SEARCH if i % 2 else Action.VIEW
        events.append(audit.record_event(member, action, detail, ip=ip, target=f"target {i}"))
    audit.link_pending(member.tenant_id)
    return list(AuditEvent.objects.filter(pk__in=[e.pk for e in events]).order_by("pk"))


def verify(tenant=None) -> tuple[int, str]:
    """`manage.py verify_audit`'s exit status and output."""
    out = io.StringIO()
    try:
        call_command("verify_audit", *(["--tenant", str(tenant.public_id)] if tenant else []), stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def status_html(client, user) -> str:
    client.force_login(user)
    response = client.get(reverse("status"))
    assert response.status_code == 200
    return response.content.decode()


def test_many_events_make_one_intact_chain_per_tenant(org, outsider):
    events = write_events(membership_of(org.auditor), 150)
    add_domain(membership_of(outsider), "fabrikam.com", ip="203.0.113.9")
    audit.link_pending(outsider.memberships.get().tenant_id)
    chain = list(AuditEvent.objects.filter(tenant=org.tenant).order_by("pk"))
    assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
    assert chain[0].prev_hash == audit_chain.GENESIS
    for before, after in zip(chain, chain[1:], strict=False):
        assert after.prev_hash == before.hash
    assert chain[-1].pk == events[-1].pk
    head = AuditChain.objects.get(tenant=org.tenant)
    assert (head.head_hash, head.head_event_id, head.events) == (chain[-1].hash, chain[-1].pk, len(chain))
    # The outsider's chain is his own, from its own start.
    theirs = AuditEvent.objects.filter(tenant=outsider.memberships.get().tenant).order_by("pk")
    assert theirs[0].prev_hash == audit_chain.GENESIS and not set(e.hash for e in theirs) & set(e.hash for e in chain)

    code, out = verify()
    assert code == 0
    assert f"Contoso ({org.tenant.public_id}): intact, {len(chain)} events, head {head.head_hash}" in out
    assert "Fabrikam" in out and "BROKEN" not in out


def test_the_stored_event_hashes_what_the_database_gives_back(org):
    event = write_events(membership_of(org.admin), 2)[1]
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.ip == "2001:db8::1"  # PostgreSQL's inet form, which the hash was taken over
    assert stored.hash == audit_chain.event_hash(stored.prev_hash, audit_chain.content_of(stored))


def test_an_edited_row_is_named_by_verify_audit_and_on_status(client, org):
    events = write_events(membership_of(org.admin), 40)
    victim = events[17]
    with connection.cursor() as cursor:  # a slip, or someone covering tracks, straight in the database
        cursor.execute("UPDATE archive_auditevent SET target = %s WHERE id = %s", ["nothing to see", victim.pk])

    code, out = verify(org.tenant)
    assert code == 1
    assert f"BROKEN at event {victim.pk} ({victim.created_at.isoformat()})" in out
    assert "its content does not match its hash" in out

    html = status_html(client, org.auditor)
    assert "hash chain <strong>broken</strong> at event " + str(victim.pk) in html
    assert 'id="audit-chain-status" class="note note--alert" role="alert"' in html
    data = client.get("/api/v1/status").json()
    assert data["audit_chain"]["intact"] is False and data["audit_chain"]["broken_event"] == victim.pk


def test_a_removed_row_breaks_the_link_of_the_event_after_it(org):
    events = write_events(membership_of(org.admin), 10)
    AuditEvent.objects.filter(pk=events[4].pk).delete()
    verdict = audit.verify_tenant(org.tenant)
    assert not verdict.ok and verdict.broken_event_id == events[5].pk
    assert "link does not match" in verdict.reason


def test_removing_the_newest_events_is_caught_by_the_chain_head(org):
    events = write_events(membership_of(org.admin), 10)
    AuditEvent.objects.filter(pk__in=[e.pk for e in events[-3:]]).delete()
    verdict = audit.verify_tenant(org.tenant)
    assert not verdict.ok and verdict.broken_event_id == events[-4].pk
    assert "events were removed" in verdict.reason


def test_a_chain_rewritten_after_a_daily_root_differs_at_the_root(org):
    """Recomputing every hash after an edit hides it from the links, not from the day's root."""
    events = write_events(membership_of(org.admin), 12)
    root = audit.record_daily_root(org.tenant, dt.date(2026, 3, 1))
    assert (root.hash, root.event_id) == (events[-1].hash, events[-1].pk)
    write_events(membership_of(org.admin), 3)
    AuditEvent.objects.filter(pk=events[2].pk).update(target="rewritten")
    running = audit_chain.GENESIS
    for event in AuditEvent.objects.filter(tenant=org.tenant).order_by("pk"):
        event.prev_hash = running
        event.hash = running = audit_chain.event_hash(running, audit_chain.content_of(event))
        event.save(update_fields=["prev_hash", "hash"])
    AuditChain.objects.filter(tenant=org.tenant).update(head_hash=running)
    verdict = audit.verify_tenant(org.tenant)
    assert not verdict.ok and verdict.broken_event_id == events[-1].pk
    assert "daily root" in verdict.reason


def test_deleting_an_account_leaves_the_chain_intact(org):
    token, _ = create_api_token(membership_of(org.admin), "bob's script")
    audit.record_event(membership_of(org.admin), Action.SEARCH, {"query": "x"}, token=token)
    write_events(membership_of(org.admin), 5)
    org.admin.delete()  # by an operator: user and token links become NULL, the names stay
    event = AuditEvent.objects.get(action=Action.SEARCH, detail__query="x")
    assert (event.user, event.token, event.actor_email) == (None, None, "bob@contoso.com")
    assert event.token_label.startswith("bob's script (arc_")
    assert audit.verify_tenant(org.tenant).ok


def test_blaming_another_api_token_breaks_the_chain(org):
    token, _ = create_api_token(membership_of(org.admin), "bob's script")
    event = audit.record_event(membership_of(org.admin), Action.SEARCH, {"query": "x"}, token=token)
    audit.link_pending(org.tenant.pk)
    AuditEvent.objects.filter(pk=event.pk).update(token_label="alice's script (arc_0000…)")
    assert audit.verify_tenant(org.tenant).broken_event_id == event.pk


def test_the_daily_task_records_one_root_a_day_and_status_says_intact(client, org, outsider):
    write_events(membership_of(org.admin), 5)
    assert "hash chain not verified yet" in status_html(client, org.owner)
    assert audit_daily() == 0
    head = AuditChain.objects.get(tenant=org.tenant)
    root = AuditRoot.objects.get(tenant=org.tenant)
    assert (root.hash, root.event_id, root.events) == (head.head_hash, head.head_event_id, head.events)
    write_events(membership_of(org.admin), 2)
    audit_daily()  # the same day: the day's first root stays
    assert AuditRoot.objects.filter(tenant=org.tenant).count() == 1
    assert AuditRoot.objects.get(tenant=org.tenant).hash == root.hash
    html = status_html(client, org.auditor)
    assert "hash chain <strong>intact</strong> as of" in html
    # Plain users see no integrity section.
    assert 'id="integrity"' not in status_html(client, org.user)
    client.force_login(org.user)
    assert "audit_chain" not in client.get("/api/v1/status").json()


def test_the_daily_task_is_on_the_beat_schedule():
    from archiva.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"tenants.tasks.audit_daily", "compliance.tasks.scrub_storage"} <= scheduled
    assert {
        "tenants.tasks.audit_daily",
        "compliance.tasks.scrub_storage",
        "compliance.tasks.scrub_tenant_storage",
    } <= set(app.tasks)  # registered, so a worker runs them


def test_verify_audit_names_an_unknown_tenant(db):
    with pytest.raises(CommandError, match="no tenant named 'Nobody'"):
        call_command("verify_audit", "--tenant", "Nobody", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_tenant_keep_one_chain():
    """Eight threads, each its own PostgreSQL connection, write at once: no two events share a previous hash."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's in-memory test database locks whole tables; run against PostgreSQL (the default)")
    org = make_org()
    members = [membership_of(u) for u in (org.owner, org.admin, org.auditor, org.user)]
    start = threading.Barrier(8, timeout=30)
    errors: list[BaseException] = []

    def write(member: Membership) -> None:
        try:
            start.wait()
            for i in range(15):
                audit.record_event(member, Action.SEARCH, {"i": i}, ip="192.0.2.1")
        except BaseException as exc:  # pragma: no cover - shown in the assertion
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(members[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    events = list(AuditEvent.objects.filter(tenant=org.tenant).order_by("pk"))
    assert sum(e.action == Action.SEARCH for e in events) == 120
    # Every writer that gave way left its event to the one holding the head, who looked again: none waits for the beat.
    assert [e.pk for e in events if e.seq is None] == []
    assert len({e.prev_hash for e in events}) == len(events)  # no fork: every hash is followed at most once
    assert audit.verify_tenant(org.tenant).ok


@pytest.mark.django_db(transaction=True)
def test_an_event_is_linked_as_soon_as_it_is_committed():
    org = make_org()
    member = membership_of(org.auditor)
    first = audit.record_event(member, Action.SEARCH, {"query": "outside a transaction"})
    with transaction.atomic():
        second = audit.record_event(member, Action.VIEW, {"message": 7})
        assert AuditEvent.objects.get(pk=second.pk).seq is None  # not before its commit
    stored = {e.pk: e for e in AuditEvent.objects.filter(pk__in=[first.pk, second.pk])}
    assert stored[first.pk].hash and stored[second.pk].prev_hash == stored[first.pk].hash
    assert stored[second.pk].seq == stored[first.pk].seq + 1


@pytest.mark.django_db(transaction=True)
def test_a_reader_does_not_wait_while_another_links_the_chain():
    """While a linker holds the tenant's chain head, a search's event is
    written and the search goes on; the linker, looking again before it
    stops, links it after its own."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time anyway")
    org = make_org()
    member = membership_of(org.auditor)
    audit.record_event(member, Action.SEARCH, {"query": "first"})
    holding, release, released = threading.Event(), threading.Event(), threading.Event()

    def hold_the_head() -> None:
        try:
            with transaction.atomic():
                AuditChain.objects.select_for_update().get(tenant=org.tenant)
                holding.set()
                release.wait(60)
            released.set()
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_head)
    holder.start()
    try:
        assert holding.wait(30)
        event = audit.record_event(member, Action.SEARCH, {"query": "while the head is held"})
        # The search got its event written while the head was still held (the old chain waited here).
        assert not released.is_set()
        assert AuditEvent.objects.get(pk=event.pk).seq is None
    finally:
        release.set()
        holder.join(60)
    assert audit.link_pending(org.tenant.pk) == 1
    assert audit.verify_tenant(org.tenant).ok


@pytest.mark.django_db(transaction=True)
def test_the_linker_links_after_its_batch_what_a_writer_left_it(monkeypatch):
    """A writer whose event commits while another links gives way at once;
    the linker, looking again after its batch, links that event too: it
    does not wait for the beat."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time anyway")
    org = make_org()
    member = membership_of(org.auditor)
    linking, written = threading.Event(), threading.Event()
    hashed = audit_chain.event_hash
    linker = threading.current_thread()

    def event_hash(previous: str, content: bytes) -> str:
        # The first writer, holding the chain head in its linking transaction, waits for the second's event.
        if threading.current_thread() is linker and not linking.is_set():
            linking.set()
            assert written.wait(30)
        return hashed(previous, content)

    def second_writer() -> None:
        try:
            assert linking.wait(30)
            audit.record_event(member, Action.VIEW, {"message": 2})  # gives way: the head is held
            written.set()
        finally:
            connection.close()

    monkeypatch.setattr(audit_chain, "event_hash", event_hash)
    thread = threading.Thread(target=second_writer)
    thread.start()
    first = audit.record_event(member, Action.SEARCH, {"query": "first"})
    thread.join(60)
    events = list(AuditEvent.objects.filter(tenant=org.tenant).order_by("pk"))
    assert [e.pk for e in events if e.seq is None] == []
    assert events[-1].prev_hash == AuditEvent.objects.get(pk=first.pk).hash
    assert audit.verify_tenant(org.tenant).ok


@pytest.mark.django_db(transaction=True)
def test_the_beat_links_what_a_crash_left_pending(monkeypatch):
    org = make_org()
    member = membership_of(org.auditor)
    audit.record_event(member, Action.SEARCH, {"query": "linked"})
    # A crash between an event's commit and its linking: the row is there, unlinked.
    with monkeypatch.context() as crash:
        crash.setattr(audit, "link_pending", lambda tenant_id, wait=False: 0)
        crashed = audit.record_event(member, Action.VIEW, {"message": 1})
    assert AuditEvent.objects.get(pk=crashed.pk).seq is None
    assert link_audit_events() == 1
    linked = AuditEvent.objects.get(pk=crashed.pk)
    assert linked.hash and linked.seq == AuditChain.objects.get(tenant=org.tenant).events
    assert link_audit_events() == 0
    assert audit.verify_tenant(org.tenant).ok


@pytest.mark.django_db(transaction=True)
def test_verifying_while_people_write_finds_the_chain_intact():
    """The daily verification runs beside searches and views: events after the head it read are the next run's."""
    org = make_org()
    member = membership_of(org.auditor)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set():
                audit.record_event(member, Action.SEARCH, {"query": "busy"})
        except BaseException as exc:  # pragma: no cover - shown in the assertion
            errors.append(exc)
        finally:
            connection.close()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        verdicts = [audit.verify_tenant(org.tenant) for _ in range(20)]
    finally:
        stop.set()
        writer.join(30)
    assert not errors
    assert all(v.ok for v in verdicts), [v.reason for v in verdicts if not v.ok]
    assert verdicts[-1].events > verdicts[0].events  # the writer was writing all along


@pytest.mark.django_db(transaction=True)
def test_events_written_before_the_chain_are_hashed_in_order_by_the_migration():
    org = make_org()
    before = [("tenants", "0004_move_apitoken_auditevent_here")]
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        old = MigrationExecutor(connection).loader.project_state(before).apps.get_model("tenants", "AuditEvent")
        ids = [
            old.objects.create(tenant_id=org.tenant.pk, actor_email="alice@contoso.com", action="search",
                               detail={"query": f"q{i}"}, ip="198.51.100.1").pk
            for i in range(5)
        ]  # fmt: skip
    finally:
        MigrationExecutor(connection).migrate(leaves)
    events = list(AuditEvent.objects.filter(tenant=org.tenant).order_by("pk"))
    assert [e.pk for e in events][-5:] == ids and all(e.hash for e in events)
    assert AuditChain.objects.get(tenant=org.tenant).head_event_id == ids[-1]
    assert audit.verify_tenant(org.tenant).ok
    # New events continue the migrated chain.
    audit.record_event(membership_of(org.owner), Action.SEARCH, {"query": "after"})
    assert audit.verify_tenant(org.tenant).ok
