"""Folder synchronisation end to end against the Microsoft fake: the fake's
Graph creates subscriptions only after a real validation POST to our live
`/o365`, and posts its change and lifecycle notifications there; the worker's
processing fetches from the fake and archives through `archive.items`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from archive.actions import index_pending
from archive.items import Item, StoreFailed, store_items
from archive.models import Message, MessageSource
from infra.storage import get_store
from ingest.models import Delivery
from m365 import changes, subscriptions
from m365 import graph as graph_client
from m365 import items as m365_items
from m365.graph import Graph
from m365.models import Mailbox
from m365.sync import FolderDelta, ItemWatermark, Notification, Subscription
from m365.tasks import (
    maintain_subscriptions,
    process_notifications,
    reconcile_connection,
    reconcile_subscriptions,
    sync_calendars_and_contacts,
    sync_mailbox_items,
)
from search import get_backend
from tests.archive_support import process, search_ids
from tests.ms_support import ALL_ROLES, connect
from tests.test_ingest_process import ROOT, process_env

pytestmark = pytest.mark.django_db(transaction=True)

MIME = (
    b"From: Bert <bert@fabrikam.com>\r\nTo: Anna <anna@contoso.com>\r\n"
    b"Subject: {subject}\r\nMessage-ID: <{mid}@fabrikam.com>\r\nDate: Sun, 06 Dec 2026 05:00:00 +0000\r\n"
    b"\r\nThe quarterly figures.\r\n"
)


def mime(subject: str) -> bytes:
    return MIME.replace(b"{subject}", subject.encode()).replace(b"{mid}", subject.replace(" ", "-").encode())


class Synced:
    """Contoso connected to the fake, anna's mailbox subscribed through `/o365`."""

    def __init__(self, fake, tenant, connection, anna, subscription):
        self.fake, self.tenant, self.connection, self.anna, self.subscription = (
            fake, tenant, connection, anna, subscription
        )  # fmt: skip

    def pending(self) -> list[int]:
        return list(Notification.objects.filter(processed_at__isnull=True).order_by("pk").values_list("pk", flat=True))

    def work(self) -> None:
        """What the worker does: process the stored notifications, then archive the deliveries they stored."""
        ids = self.pending()
        assert ids, "the fake posted nothing that was stored"
        process_notifications(ids)
        for delivery in Delivery.objects.filter(status__in=(Delivery.Status.STORED, Delivery.Status.RECEIVED)):
            process(delivery.pk, index=False)

    def sources(self, graph_id: str) -> list[MessageSource]:
        return list(MessageSource.objects.filter(tenant=self.tenant, graph_id=graph_id))


@pytest.fixture
def synced(ms_fake, live_server, settings, org, redis_broker) -> Synced:
    settings.SITE_ROOT = live_server.url
    return sync_anna(ms_fake, org.tenant, ALL_ROLES)


def sync_anna(fake, tenant, roles) -> Synced:
    """Contoso connected with `roles` granted, folder sync switched on, anna's mailbox subscribed."""
    connection = connect(fake, tenant, roles=roles)
    anna = fake.add_user(str(connection.directory_id), "anna@contoso.com", "Anna")
    Mailbox.objects.create(
        tenant=tenant, graph_id=anna.id, user_principal_name=anna.upn, primary_address="anna@contoso.com"
    )
    connection.sync_folders = True
    connection.save()
    outcome = reconcile_connection(connection)
    assert (outcome.created, outcome.failed) == (1, 0)
    subscription = Subscription.objects.get(tenant=tenant, state=Subscription.State.ACTIVE)
    return Synced(fake, tenant, connection, anna, subscription)


def test_a_subscription_is_created_through_graphs_validation_of_our_webhook(synced):
    fake, subscription = synced.fake, synced.subscription
    validations = [a for a in fake.notification_log if a.kind == "validation"]
    # Graph validates both URLs, the change and the lifecycle one: both ours, both echoed.
    assert [(a.status, a.url) for a in validations] == [(200, subscriptions.notification_url())] * 2
    graph_side = fake.subscriptions[subscription.graph_id]
    assert graph_side.resource == f"users/{synced.anna.id}/messages"
    assert graph_side.change_types == {"created", "updated", "deleted"}
    assert graph_side.notification_url == graph_side.lifecycle_url == subscriptions.notification_url()
    assert graph_side.client_state and len(graph_side.client_state) >= 32
    # Only its hash is kept, and the expiry is within Graph's limit for messages.
    assert graph_side.client_state not in {subscription.client_state_sha256, subscription.graph_id}
    assert timedelta(hours=60) < subscription.expires_at - timezone.now() < timedelta(minutes=4230)


def test_a_message_created_in_the_mailbox_is_archived_with_its_folder(synced):
    message_id = synced.fake.add_message(synced.anna, "Inbox/Projects", mime("Figures"))
    [answer] = [a for a in synced.fake.notification_log if a.kind == "change"]
    assert answer.status == 202 and answer.seconds < 3  # Graph's limit, with the row stored before it
    synced.work()
    [source] = synced.sources(message_id)
    assert (source.mailbox, source.folder, source.deleted_at) == ("anna@contoso.com", "Inbox/Projects", None)
    message = Message.objects.get(pk=source.message_id)
    assert message.subject == "Figures"
    assert Notification.objects.filter(processed_at__isnull=False, error="").count() == 1


def test_a_move_in_the_mailbox_changes_the_folder(synced):
    message_id = synced.fake.add_message(synced.anna, "Inbox", mime("Moving"))
    synced.work()
    index_pending()
    [source] = synced.sources(message_id)
    assert search_ids(get_backend(), synced.tenant, "folder:Inbox") == [source.message_id]
    synced.fake.move_message(synced.anna, message_id, "Archive/2026")
    synced.work()
    [source] = synced.sources(message_id)
    assert source.folder == "Archive/2026"
    assert [h["folder"] for h in source.folder_history] == ["Inbox"]
    # Searchable in its new folder only (the worker indexes it again after the move).
    index_pending()
    backend = get_backend()
    assert search_ids(backend, synced.tenant, 'folder:"Archive/2026"') == [source.message_id]
    assert search_ids(backend, synced.tenant, "folder:Inbox") == []
    assert synced.fake.mutable_id_requests == []  # the moved message kept its id: immutable ids asked for


def test_an_imported_message_that_moves_is_not_downloaded_again(synced):
    fake = synced.fake
    graph_side = fake.subscriptions.pop(synced.subscription.graph_id)
    message_id = fake.add_message(synced.anna, "Inbox", mime("Imported"))
    # The historical import stored it (same Graph id, same bytes) before sync started.
    store_items(synced.tenant, [Item("mail", "anna@contoso.com", "Inbox", message_id, mime("Imported"))])
    fake.subscriptions[graph_side.id] = graph_side
    fake.move_message(synced.anna, message_id, "Inbox/Filed")
    synced.work()
    assert [s.folder for s in synced.sources(message_id)] == ["Inbox/Filed"]
    assert fake.request_count("/$value") == 0


def test_a_deletion_in_the_mailbox_is_recorded_and_the_message_kept(synced):
    message_id = synced.fake.add_message(synced.anna, "Inbox", mime("Deleted"))
    synced.work()
    synced.fake.delete_message(synced.anna, message_id)
    synced.work()
    [source] = synced.sources(message_id)
    assert source.deleted_at is not None
    assert Message.objects.filter(pk=source.message_id).exists()


def test_reauthorization_required_renews_the_subscription(synced):
    fake, subscription = synced.fake, synced.subscription
    Subscription.objects.filter(pk=subscription.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    assert fake.send_lifecycle(subscription.graph_id, "reauthorizationRequired") == 202
    synced.work()
    subscription.refresh_from_db()
    assert subscription.renewed_at is not None
    assert subscription.expires_at - timezone.now() > timedelta(hours=60)
    assert fake.request_count(f"/subscriptions/{subscription.graph_id}", method="PATCH") == 1


def test_subscription_removed_recreates_it_and_resyncs_by_delta(synced):
    fake, old = synced.fake, synced.subscription
    before = fake.add_message(synced.anna, "Inbox", mime("Before"))
    synced.work()
    assert fake.send_lifecycle(old.graph_id, "subscriptionRemoved") == 202
    # Missed while Graph had no subscription: a resync must find it.
    fake.subscriptions.clear()
    missed = fake.add_message(synced.anna, "Inbox/Later", mime("Missed"))
    synced.work()
    old.refresh_from_db()
    assert old.state == Subscription.State.REMOVED
    fresh = Subscription.objects.get(state=Subscription.State.ACTIVE)
    assert fresh.graph_id in fake.subscriptions and fresh.user_id == synced.anna.id
    assert [s.folder for s in synced.sources(missed)] == ["Inbox/Later"]
    assert len(synced.sources(before)) == 1  # known already: not stored twice


def test_missed_notifications_are_caught_up_by_delta(synced):
    """Graph dropped the notifications of a move, a deletion and a new message:
    `missed` resyncs the mailbox by delta query, a move is no deletion."""
    fake = synced.fake
    moved = fake.add_message(synced.anna, "Inbox", mime("Moved quietly"))
    deleted = fake.add_message(synced.anna, "Inbox", mime("Deleted quietly"))
    kept = fake.add_message(synced.anna, "Inbox", mime("Stays"))
    synced.work()
    graph_side = fake.subscriptions.pop(synced.subscription.graph_id)  # Graph sends nothing now
    fake.move_message(synced.anna, moved, "Inbox/Done")
    fake.delete_message(synced.anna, deleted)
    new = fake.add_message(synced.anna, "Projects", mime("Arrived quietly"))
    fake.subscriptions[graph_side.id] = graph_side
    assert fake.send_lifecycle(graph_side.id, "missed") == 202
    synced.work()
    state = {
        s.graph_id: (s.folder, s.deleted_at is not None) for s in MessageSource.objects.filter(tenant=synced.tenant)
    }
    assert state == {
        moved: ("Inbox/Done", False),
        deleted: ("Inbox", True),
        kept: ("Inbox", False),
        new: ("Projects", False),
    }
    # The delta state is kept: the next resync gets only what changed since,
    # and a message that left one folder for another is moved, not deleted.
    fake.subscriptions.pop(graph_side.id)
    later = fake.add_message(synced.anna, "Inbox", mime("Later"))
    fake.move_message(synced.anna, kept, "Archive")
    before = fake.request_count("/$value")
    assert changes.resync(Graph(synced.connection), synced.subscription) == 2
    assert fake.request_count("/$value") == before + 1  # only the new message is downloaded
    [kept_source] = synced.sources(kept)
    assert (kept_source.folder, kept_source.deleted_at) == ("Archive", None)
    assert [s.folder for s in synced.sources(later)] == ["Inbox"]


def test_graph_trouble_leaves_the_notification_for_a_retry(synced, settings):
    """Graph answering 503 past the client's own retries: the notification stays
    unprocessed with the reason, its retry is due later, and it goes through
    once Graph is back."""
    fake = synced.fake
    message_id = fake.add_message(synced.anna, "Inbox", mime("Throttled"))
    fake.throttle(graph_client.MAX_ATTEMPTS, retry_after=0, status=503)  # every try of the next request
    [pk] = synced.pending()
    assert process_notifications([pk]) == 0
    notification = Notification.objects.get(pk=pk)
    assert notification.processed_at is None and notification.attempts == 1
    assert "503" in notification.error
    assert notification.enqueued_at > timezone.now()  # its retry is published with a countdown
    synced.work()
    assert [s.folder for s in synced.sources(message_id)] == ["Inbox"]
    notification.refresh_from_db()
    assert notification.processed_at is not None and notification.error == ""


def test_a_removed_connection_stops_its_subscriptions_at_once(synced):
    synced.connection.delete()
    synced.subscription.refresh_from_db()
    assert synced.subscription.state == Subscription.State.REMOVED
    synced.fake.add_message(synced.anna, "Inbox", mime("After removal"))
    assert synced.fake.notification_responses[-1] == 403
    assert not Notification.objects.exists()


def test_a_resync_stores_in_batches_and_its_delta_state_never_runs_ahead(synced, monkeypatch):
    """120 messages Graph never told us about: stored 50 at a time (one pack
    each), and a failure in the middle leaves no folder's deltaLink saved past
    what is archived, so the next resync finds the rest."""
    fake = synced.fake
    graph_side = fake.subscriptions.pop(synced.subscription.graph_id)
    ids = [fake.add_message(synced.anna, "Inbox/Bulk", mime(f"Bulk {n}")) for n in range(120)]
    fake.subscriptions[graph_side.id] = graph_side
    graph = Graph(synced.connection)

    # The storage fails on the second batch (a full disk), as the archive's own tests inject it.
    store = get_store()
    real_put = store.put_objects
    puts = []

    def full_disk_on_the_second_batch(items, **options):
        puts.append(len(items))
        return [OSError("disk full")] * len(items) if len(puts) == 2 else real_put(items, **options)

    monkeypatch.setattr(store, "put_objects", full_disk_on_the_second_batch)
    with pytest.raises(StoreFailed):
        changes.resync(graph, synced.subscription)
    bulk = fake.folder_id(synced.anna, "Inbox/Bulk")
    assert not FolderDelta.objects.filter(folder_id=bulk).exists()
    assert MessageSource.objects.filter(tenant=synced.tenant, graph_id__in=ids).count() == 50
    monkeypatch.setattr(store, "put_objects", real_put)

    assert changes.resync(graph, synced.subscription) == 120
    archived = MessageSource.objects.filter(tenant=synced.tenant, graph_id__in=ids)
    assert archived.count() == 120
    assert archived.values("delivery__storage_key").distinct().count() == 1 + 2  # the first batch, then 50 + 20
    assert FolderDelta.objects.filter(folder_id=bulk).exists()


def test_a_notification_with_a_forged_client_state_is_refused(synced):
    fake = synced.fake
    fake.subscriptions[synced.subscription.graph_id].client_state = "guessed"
    fake.add_message(synced.anna, "Inbox", mime("Forged"))
    assert fake.notification_responses[-1] == 403
    assert not Notification.objects.exists()


def test_the_renewal_beat_renews_only_subscriptions_near_expiry(synced, ms_fake):
    bert = ms_fake.add_user(str(synced.connection.directory_id), "bert@contoso.com", "Bert")
    Mailbox.objects.create(
        tenant=synced.tenant, graph_id=bert.id, user_principal_name=bert.upn, primary_address="bert@contoso.com"
    )
    soon = timezone.now() + timedelta(hours=3)
    Subscription.objects.filter(pk=synced.subscription.pk).update(expires_at=soon)
    assert maintain_subscriptions() == 1  # one reconcile task per connection, published
    assert reconcile_subscriptions(synced.connection.pk) == 0  # what the worker runs
    synced.subscription.refresh_from_db()
    assert synced.subscription.expires_at > soon + timedelta(hours=48)
    bert_subscription = Subscription.objects.get(user_id=bert.id, state=Subscription.State.ACTIVE)
    before = bert_subscription.expires_at
    assert reconcile_subscriptions(synced.connection.pk) == 0  # nothing near expiry now: nothing renewed or created
    bert_subscription.refresh_from_db()
    assert bert_subscription.expires_at == before
    assert Subscription.objects.filter(state=Subscription.State.ACTIVE).count() == 2


def test_a_reconcile_out_of_time_leaves_the_rest_to_a_fresh_run(synced, ms_fake):
    """Each creation costs Graph's validation round trip: a tenant of many
    mailboxes is reconciled in several tasks, never past the worker's time limit."""
    for name in ("bert", "carl"):
        user = ms_fake.add_user(str(synced.connection.directory_id), f"{name}@contoso.com")
        Mailbox.objects.create(
            tenant=synced.tenant, graph_id=user.id, user_principal_name=user.upn, primary_address=user.upn
        )
    targets = [
        subscriptions.Target(m.graph_id, m.primary_address) for m in Mailbox.objects.filter(tenant=synced.tenant)
    ]
    graph, directory = Graph(synced.connection), str(synced.connection.directory_id)
    first = subscriptions.reconcile(graph, synced.tenant, directory, True, targets, budget=0)
    assert (first.created, first.more) == (1, True)  # one step, then out of time
    second = subscriptions.reconcile(graph, synced.tenant, directory, True, targets)
    assert (second.created, second.more) == (1, False)
    assert Subscription.objects.filter(state=Subscription.State.ACTIVE).count() == 3


def test_a_mailbox_subscribed_twice_at_once_keeps_one_subscription(synced):
    """Two reconciles at once (the hourly one and a save's): the second
    subscription Graph made is deleted again, the first one kept."""
    target = subscriptions.Target(synced.anna.id, "anna@contoso.com")
    graph, directory = Graph(synced.connection), str(synced.connection.directory_id)
    again = subscriptions.create(graph, synced.tenant, directory, target)
    assert again.pk == synced.subscription.pk
    assert list(synced.fake.subscriptions) == [synced.subscription.graph_id]


def test_switching_folder_sync_off_removes_the_subscriptions(synced):
    synced.connection.sync_folders = False
    synced.connection.save()
    outcome = reconcile_connection(synced.connection)
    assert outcome.removed == 1
    assert synced.subscription.graph_id not in synced.fake.subscriptions
    synced.subscription.refresh_from_db()
    assert synced.subscription.state == Subscription.State.REMOVED


def test_saving_the_connection_asks_a_worker_to_reconcile_its_subscriptions(synced, settings):
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete("celery")
    synced.connection.sync_folders = False
    synced.connection.save()
    deadline = time.monotonic() + 5
    published: list[dict] = []
    while not published and time.monotonic() < deadline:
        messages = [json.loads(raw) for raw in queue.lrange("celery", 0, -1)]
        published = [m for m in messages if m["headers"]["task"] == "m365.tasks.reconcile_subscriptions"]
        time.sleep(0.05)
    assert [m["headers"]["argsrepr"] for m in published] == [f"({synced.connection.pk},)"]
    assert reconcile_subscriptions(synced.connection.pk) == 0  # what the worker then runs
    synced.subscription.refresh_from_db()
    assert synced.subscription.state == Subscription.State.REMOVED


def test_events_and_contacts_are_archived_as_their_own_kinds(synced):
    fake = synced.fake
    fake.add_event(
        synced.anna,
        {
            "subject": "Board meeting",
            "start": {"dateTime": "2026-12-08T09:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-08T10:00:00.0000000", "timeZone": "UTC"},
            "location": {"displayName": "Room 4, Building 2"},
            "attendees": [{"type": "required", "emailAddress": {"name": "Bert", "address": "bert@fabrikam.com"}}],
        },
    )
    fake.add_contact(
        synced.anna,
        {
            "displayName": "Bert Example",
            "givenName": "Bert",
            "surname": "Example",
            "emailAddresses": [{"name": "Bert", "address": "bert@fabrikam.com"}],
            "companyName": "Fabrikam",
        },
    )
    assert sync_calendars_and_contacts() == 1  # one task per synchronised mailbox, published
    assert sync_mailbox_items(synced.subscription.pk) == 2  # what the worker runs
    kinds = sorted(MessageSource.objects.filter(tenant=synced.tenant).values_list("kind", "folder"))
    assert kinds == [("contact", "Contacts"), ("event", "Calendar")]
    # The archive reads what we wrote: searchable by kind and by its fields.
    for delivery in Delivery.objects.filter(tenant=synced.tenant):
        assert process(delivery.pk, index=False) == Delivery.Status.ARCHIVED
    index_pending()
    backend = get_backend()
    [event] = Message.objects.filter(tenant=synced.tenant, kind="event")
    [contact] = Message.objects.filter(tenant=synced.tenant, kind="contact")
    assert search_ids(backend, synced.tenant, 'kind:event "Board meeting"') == [event.pk]
    assert search_ids(backend, synced.tenant, "kind:event Building") == [event.pk]
    assert search_ids(backend, synced.tenant, "kind:contact Fabrikam") == [contact.pk]
    assert ItemWatermark.objects.filter(tenant=synced.tenant).count() == 2
    # Nothing changed: the next run stores nothing new.
    assert m365_items.sync_items(Graph(synced.connection), synced.subscription) == 2  # the watermark's second again
    assert MessageSource.objects.filter(tenant=synced.tenant).count() == 2
    # The event deleted in the mailbox (the fake has no helper: its calendar is a dict):
    # recorded as deleted, kept in the archive.
    fake.user(synced.anna).events.clear()
    m365_items.sync_items(Graph(synced.connection), synced.subscription)
    event_source = MessageSource.objects.get(tenant=synced.tenant, kind="event")
    assert event_source.deleted_at is not None
    assert MessageSource.objects.get(tenant=synced.tenant, kind="contact").deleted_at is None
    assert Message.objects.filter(pk=event.pk).exists()


def test_without_calendars_read_the_contacts_still_sync(ms_fake, live_server, settings, org, redis_broker):
    settings.SITE_ROOT = live_server.url
    synced = sync_anna(ms_fake, org.tenant, ALL_ROLES - {"Calendars.Read"})
    ms_fake.add_event(synced.anna, {"subject": "Not readable"})
    ms_fake.add_contact(synced.anna, {"displayName": "Readable", "emailAddresses": [{"address": "r@fabrikam.com"}]})
    assert sync_mailbox_items(synced.subscription.pk) == 1
    assert list(MessageSource.objects.filter(tenant=org.tenant).values_list("kind", flat=True)) == ["contact"]


def test_a_stored_notification_survives_a_killed_worker_and_a_lost_task(synced, settings, tls_files, tmp_path):
    """Answered 202 once stored: the worker is dead (kill -9), the broker then
    loses the task (flushed); a worker started later finds the row by the
    sweep and archives the message."""
    broker = settings.CELERY_BROKER_URL
    first = start_worker(settings, tls_files, synced.fake, broker, tmp_path / "first.log")
    wait_for_log(tmp_path / "first.log", "ready.")
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    message_id = synced.fake.add_message(synced.anna, "Inbox/Projects", mime("Durable"))
    assert synced.fake.notification_responses[-1] == 202
    assert Notification.objects.filter(processed_at__isnull=True).count() == 1
    deadline = time.monotonic() + 5
    while Notification.objects.filter(enqueued_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the publishing thread puts the task in the broker
    redis.Redis.from_url(broker).flushdb()  # the broker fault: the task is gone

    # The sweep (beat, every second here) publishes it again once ARCHIVA_REQUEUE_AFTER has passed.
    second = start_worker(
        settings, tls_files, synced.fake, broker, tmp_path / "second.log", beat=tmp_path / "beat", requeue_after=10
    )
    try:
        deadline = time.monotonic() + 90
        while (
            time.monotonic() < deadline
            and not MessageSource.objects.filter(graph_id=message_id, message__isnull=False).exists()
        ):
            time.sleep(0.25)
    finally:
        second.terminate()
        second.wait(30)
    log = (tmp_path / "second.log").read_text()
    sources = synced.sources(message_id)
    assert len(sources) == 1 and sources[0].message_id is not None, log[-4000:]
    assert sources[0].folder == "Inbox/Projects"
    notification = Notification.objects.get()
    assert notification.processed_at is not None and notification.error == ""


def wait_for_log(path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path}: {path.read_text(errors='replace')[-2000:]}")


def start_worker(
    settings, tls_files, fake, broker: str, log, beat=None, requeue_after: int = 300
) -> subprocess.Popen[bytes]:
    """A real Celery worker (solo pool) on this test's database, pointed at the
    fake; with `beat` (a schedule file) also the periodic tasks, sweeping every second."""
    env = process_env(
        settings,
        tls_files,
        CELERY_BROKER_URL=broker,
        ARCHIVA_MS_LOGIN_URL=fake.url,
        ARCHIVA_MS_GRAPH_URL=fake.url,
        ARCHIVA_MS_CA_BUNDLE=str(fake.ca_path),
        ARCHIVA_SWEEP_INTERVAL="1",
        ARCHIVA_REQUEUE_AFTER=str(requeue_after),
    )
    command = [sys.executable, "-m", "celery", "-A", "archiva", "worker", "--pool", "solo", "--loglevel", "info"]
    if beat is not None:
        command += ["--beat", "--schedule", str(beat)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
