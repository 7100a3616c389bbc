"""Mailbox items (the archive side of the Microsoft 365 import and sync):
stored as durably as journal reports, archived by the same worker path,
merged with their journal copies by Message-ID, filed in folders that
search and the folder tree show, and visible to their mailbox's owner.

Real PostgreSQL, the real bucket store and both search engines (embedded
and the Elasticsearch API) where search is involved.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from archive import access as archive_access
from archive import actions
from archive.items import (
    FolderNode,
    Item,
    StoreFailed,
    build_tree,
    folder_tree,
    record_deletion,
    record_folder_change,
    store_items,
    stored_graph_ids,
)
from archive.models import Message, MessageSource
from archive.parser.journal import parse_report
from archive.processing import process_deliveries
from infra.storage import get_store
from ingest.models import Delivery
from search import get_backend, reset_backend
from tests.archive_support import archive, corpus, search_ids
from tests.conftest import membership_of
from tests.search_support import elasticsearch_url  # noqa: F401 - the session's Elasticsearch API

EVENT = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\r\n"
    b"BEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\nBEGIN:STANDARD\r\nDTSTART:16010101T030000\r\n"
    b"TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
    b"BEGIN:VEVENT\r\nUID:040000008200E00074C5B7101A82E0080000000010\r\nSUMMARY:Budget review\r\n"
    b'ORGANIZER;CN="Example, Alice":mailto:alice@contoso.com\r\n'
    b"ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;CN=Bob:mailto:Bob@contoso.com\r\n"
    b"DTSTART:20260310T140000Z\r\nDTEND:20260310T150000Z\r\nLOCATION:Room 4\\, Building 2\r\n"
    b"DESCRIPTION:Agenda: the Q3 forecast\\nand the hiring pl\r\n an.\r\n"
    b"BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:Reminder\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\n"
    b"END:VEVENT\r\nEND:VCALENDAR\r\n"
)

CONTACT = (
    b"BEGIN:VCARD\r\nVERSION:3.0\r\nN:Contractor;Carl;;;\r\nFN:Carl Contractor\r\n"
    b"ORG:Northwind Traders;Purchasing\r\nTITLE:Buyer\r\nEMAIL;TYPE=INTERNET:carl@northwind.example\r\n"
    b"TEL;TYPE=WORK:+1 555 0100\r\nEND:VCARD\r\n"
)


CARD_SAVED = datetime(2025, 11, 3, 8, 0, tzinfo=UTC)  # a contact has no date of its own: Graph's time


def mail(message_id: str, subject: str, sender: str = "alice@contoso.com", to: str = "bob@fabrikam.com") -> bytes:
    """A message as a mailbox holds it (what Graph's `$value` returns): the MIME itself, no journal envelope."""
    return (
        f"Received: from mail.contoso.com by mbx.contoso.com; Mon, 02 Mar 2026 09:30:01 +0000\r\n"
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 02 Mar 2026 09:30:00 +0000\r\n"
        f"Message-ID: <{message_id}>\r\nContent-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\n"
        f"Body of {subject}.\r\n"
    ).encode()


def mailbox_copy_of_journal_original(name: str) -> bytes:
    """The original inside a corpus journal report, as its sender's mailbox holds it (a header more)."""
    return b"X-MS-Exchange-Organization-AuthAs: Internal\r\n" + parse_report(corpus(name)).original


def delivery_ids(queue_ids: list[str]) -> list[int]:
    return list(Delivery.objects.filter(queue_id__in=queue_ids).order_by("pk").values_list("pk", flat=True))


def archive_items(tenant, items: list[Item]) -> list[str]:
    """Store the items, then run the worker's processing on them (and index)."""
    queue_ids = store_items(tenant, items)
    result = process_deliveries(delivery_ids(queue_ids), index=True)
    assert not result.troubled, result.troubled
    return queue_ids


def message_of(tenant, queue_id: str) -> Message:
    return Delivery.objects.select_related("message").get(tenant=tenant, queue_id=queue_id).message


@pytest.fixture(params=["embedded", "elasticsearch"])
def search_engine(request, settings):
    """The worker's search backend: the embedded default, or Elasticsearch (an index of this test's own)."""
    if request.param == "elasticsearch":
        settings.ARCHIVA_SEARCH_URL = request.getfixturevalue("elasticsearch_url")
        settings.ARCHIVA_SEARCH_INDEX = f"archiva-test-items-{uuid.uuid4().hex[:10]}-messages"
        settings.ARCHIVA_SEARCH_REFRESH = "wait_for"
    reset_backend()
    backend = get_backend()
    yield backend
    if request.param == "elasticsearch":
        backend.drop_index()  # type: ignore[attr-defined]  # the Elasticsearch backend's own, not the interface's
    reset_backend()


# --- storing -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_stored_items_are_recorded_and_in_the_bucket_before_store_items_returns(org):
    raw = mail("durable-1@contoso.com", "Durable")
    [queue_id] = store_items(org.tenant, [Item("mail", "Alice@Contoso.com", "/Inbox/Projects/", "AAMkAD-1", raw)])
    delivery = Delivery.objects.get(tenant=org.tenant, queue_id=queue_id)
    assert delivery.source == Delivery.Source.MAILBOX
    assert delivery.status == Delivery.Status.STORED
    assert delivery.sha256 == hashlib.sha256(raw).hexdigest()
    assert delivery.storage_key.startswith("pack/")  # packed like the ingest's small reports
    assert delivery.read_report() == raw  # read back from the bucket, hash checked
    assert delivery.enqueued_at is not None  # published to the worker once committed (the broker: real Redis)
    source = MessageSource.objects.get(delivery=delivery)
    assert (source.mailbox, source.folder, source.graph_id, source.kind) == (
        "alice@contoso.com",
        "Inbox/Projects",
        "AAMkAD-1",
        "mail",
    )
    assert source.message is None  # the worker links it


@pytest.mark.django_db
def test_storing_the_same_item_again_stores_nothing_new(org):
    raw = mail("again-1@contoso.com", "Again")
    first = store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-2", raw)])
    twice_in_a_batch = store_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-2", raw),
            Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-2", raw),
        ],
    )
    assert twice_in_a_batch == first * 2
    assert store_items(org.tenant, []) == []
    assert stored_graph_ids(org.tenant, "ALICE@contoso.com", ["AAMkAD-2", "AAMkAD-new"]) == {"AAMkAD-2"}
    assert stored_graph_ids(org.tenant, "erin@contoso.com", ["AAMkAD-2"]) == set()
    assert Delivery.objects.filter(tenant=org.tenant).count() == 1
    assert MessageSource.objects.filter(tenant=org.tenant).count() == 1
    # The same id with other bytes (an edited draft, an updated event) is a new version.
    store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-2", raw + b"edited\r\n")])
    assert MessageSource.objects.filter(tenant=org.tenant).count() == 2


@pytest.mark.django_db
def test_the_same_item_id_in_two_tenants_is_two_items(org, outsider):
    raw = mail("tenants-1@contoso.com", "Two tenants")
    fabrikam = membership_of(outsider).tenant
    ours = store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-3", raw)])
    theirs = store_items(fabrikam, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-3", raw)])
    assert ours != theirs
    assert Delivery.objects.get(queue_id=theirs[0]).tenant == fabrikam


@pytest.mark.django_db
def test_a_large_item_goes_through_its_spool_file_which_is_consumed(org, tmp_path):
    body = b"".join(b"line %06d of a large attachment\r\n" % n for n in range(12_000))  # ~400 KB
    raw = mail("large-1@contoso.com", "Large") + body
    spool = tmp_path / "spooled.eml"
    spool.write_bytes(raw)
    [queue_id] = store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-4", spool)])
    assert not spool.exists()
    delivery = Delivery.objects.get(queue_id=queue_id)
    assert delivery.storage_key.startswith("raw/") and delivery.size == len(raw)  # an object of its own
    assert delivery.read_report() == raw
    process_deliveries([delivery.pk], index=True)
    assert message_of(org.tenant, queue_id).subject == "Large"


@pytest.mark.django_db
def test_malformed_items_are_refused_with_a_reason_and_nothing_is_stored(org, tmp_path):
    raw = mail("bad-1@contoso.com", "Bad")
    with pytest.raises(ValueError, match="kind"):
        Item("fax", "alice@contoso.com", "Inbox", "X", raw)  # type: ignore[arg-type]  # the wrong kind on purpose
    with pytest.raises(ValueError, match="primary SMTP address"):
        Item("mail", "not an address", "Inbox", "X", raw)
    with pytest.raises(ValueError, match="graph_id"):
        Item("mail", "alice@contoso.com", "Inbox", "", raw)
    spool = tmp_path / "wrong.eml"
    spool.write_bytes(raw)
    wrong = Item("mail", "alice@contoso.com", "Inbox", "X", spool, sha256="0" * 64)
    with pytest.raises(ValueError, match="hashes to"):
        store_items(org.tenant, [wrong])
    assert not spool.exists()  # consumed all the same: the caller hands it over
    assert not Delivery.objects.filter(tenant=org.tenant).exists()


@pytest.mark.django_db
def test_an_item_the_store_refuses_is_reported_and_storing_again_completes_it(org, settings, monkeypatch):
    raw = mail("retry-1@contoso.com", "Retry")
    store = get_store()
    real_put = store.put_objects

    def refuse(items, **options):
        return [OSError("disk full")] * len(items)

    monkeypatch.setattr(store, "put_objects", refuse)
    with pytest.raises(StoreFailed, match="1 of 1"):
        store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-5", raw)])
    assert not Delivery.objects.filter(tenant=org.tenant).exists()
    monkeypatch.setattr(store, "put_objects", real_put)
    [queue_id] = store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "AAMkAD-5", raw)])
    assert Delivery.objects.get(queue_id=queue_id).read_report() == raw


# --- one message, every source -------------------------------------------------------


@pytest.mark.django_db
def test_a_journaled_message_imported_later_is_one_message_with_two_sources(org, search_engine):
    journal = archive(org.tenant, corpus("01-simple.eml"))
    [queue_id] = archive_items(
        org.tenant,
        [
            Item(
                "mail", "alice@contoso.com", "Sent Items", "AAMkAD-6", mailbox_copy_of_journal_original("01-simple.eml")
            )
        ],
    )
    message = message_of(org.tenant, queue_id)
    assert message.pk == journal.message_id
    assert Message.objects.filter(tenant=org.tenant).count() == 1
    assert set(message.deliveries.values_list("source", flat=True)) == {"journal", "mailbox"}
    assert message.mailboxes == ["alice@contoso.com"]
    assert message.envelope_recipients  # the journal's envelope is kept
    assert search_ids(search_engine, org.tenant, 'folder:"Sent Items"') == [message.pk]
    sources = archive_access.sources_for(membership_of(org.owner), message)
    assert [s["source"] for s in sources] == ["journal", "mailbox"]
    assert sources[0]["queue_id"] == journal.queue_id
    assert (sources[1]["mailbox"], sources[1]["folder"]) == ("alice@contoso.com", "Sent Items")


@pytest.mark.django_db
def test_an_imported_message_journaled_later_is_one_message_with_two_sources(org, search_engine):
    [queue_id] = archive_items(
        org.tenant,
        [
            Item(
                "mail",
                "alice@contoso.com",
                "Sent Items",
                "AAMkAD-7",
                mailbox_copy_of_journal_original("02-bcc-expanded-forwarded.eml"),
            )
        ],
    )
    imported = message_of(org.tenant, queue_id)
    journal = archive(org.tenant, corpus("02-bcc-expanded-forwarded.eml"))
    assert journal.message_id == imported.pk
    message = Message.objects.get(pk=imported.pk)
    assert Message.objects.filter(tenant=org.tenant).count() == 1
    assert message.version > imported.version
    assert message.mailboxes == ["alice@contoso.com"]
    assert any(r["kind"] == "bcc" for r in message.envelope_recipients)  # the journal added its envelope
    assert search_ids(search_engine, org.tenant, 'folder:"sent items"') == [message.pk]
    assert len(archive_access.sources_for(membership_of(org.owner), message)) == 2


@pytest.mark.django_db
def test_copies_in_two_mailboxes_are_one_message_filed_in_both(org, search_engine):
    raw = mail("two-boxes@contoso.com", "Two mailboxes", to="erin@contoso.com")
    [sent] = archive_items(org.tenant, [Item("mail", "alice@contoso.com", "Sent Items", "A-8", raw)])
    [received] = archive_items(
        org.tenant, [Item("mail", "erin@contoso.com", "Inbox/Projects", "E-8", b"X-Copy: erin\r\n" + raw)]
    )
    message = message_of(org.tenant, received)
    assert message == message_of(org.tenant, sent)
    assert message.mailboxes == ["alice@contoso.com", "erin@contoso.com"]
    assert search_ids(search_engine, org.tenant, "folder:inbox") == [message.pk]
    assert search_ids(search_engine, org.tenant, 'folder:"Sent Items"') == [message.pk]


# --- folders, moves, deletions ---------------------------------------------------------


@pytest.mark.django_db
def test_folder_search_matches_the_folder_and_below_case_insensitively(org, search_engine):
    archive_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Inbox", "F-1", mail("f1@contoso.com", "In the inbox")),
            Item("mail", "alice@contoso.com", "Inbox/Projects", "F-2", mail("f2@contoso.com", "A project")),
            Item("mail", "alice@contoso.com", "Inbox/Projects/Q3", "F-3", mail("f3@contoso.com", "Deeper")),
            Item("mail", "alice@contoso.com", "Inboxes", "F-4", mail("f4@contoso.com", "Not the inbox")),
        ],
    )
    subjects = dict(Message.objects.filter(tenant=org.tenant).values_list("pk", "subject"))

    def found(query: str) -> set[str]:
        return {subjects[pk] for pk in search_ids(search_engine, org.tenant, query)}

    assert found("folder:Inbox") == {"In the inbox", "A project", "Deeper"}
    assert found('folder:"inbox/projects"') == {"A project", "Deeper"}
    assert found("folder:Inbox/Projects/Q3") == {"Deeper"}
    assert found("folder:Inbox -folder:Inbox/Projects") == {"In the inbox"}
    assert found("folder:Projects") == set()  # a path from the mailbox's top, not a folder's name anywhere
    assert found("kind:mail folder:Inboxes") == {"Not the inbox"}


@pytest.mark.django_db
def test_a_move_changes_the_folder_keeps_its_history_and_is_searchable(org, search_engine):
    [queue_id] = archive_items(
        org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "M-1", mail("move-1@contoso.com", "Moving"))]
    )
    message = message_of(org.tenant, queue_id)
    assert record_folder_change(org.tenant, "Alice@contoso.com", "M-1", "Archive/2026") is True
    source = MessageSource.objects.get(graph_id="M-1")
    assert source.folder == "Archive/2026"
    assert [h["folder"] for h in source.folder_history] == ["Inbox"]
    message.refresh_from_db()
    assert message.index_status == Message.IndexStatus.PENDING
    actions.index_pending()
    assert search_ids(search_engine, org.tenant, "folder:Archive/2026") == [message.pk]
    assert search_ids(search_engine, org.tenant, "folder:Inbox") == []
    assert record_folder_change(org.tenant, "alice@contoso.com", "never-seen", "Inbox") is False
    assert record_folder_change(org.tenant, "erin@contoso.com", "M-1", "Inbox") is False  # another mailbox's id


@pytest.mark.django_db
def test_a_deletion_is_recorded_and_never_deletes_from_the_archive(org, search_engine):
    [queue_id] = archive_items(
        org.tenant, [Item("mail", "erin@contoso.com", "Inbox", "D-1", mail("delete-1@contoso.com", "Deleted later"))]
    )
    message = message_of(org.tenant, queue_id)
    assert record_deletion(org.tenant, "erin@contoso.com", "D-1") is True
    assert MessageSource.objects.get(graph_id="D-1").deleted_at is not None
    actions.index_pending()
    assert Message.objects.filter(pk=message.pk).exists()
    assert Delivery.objects.get(queue_id=queue_id).read_report()  # the bytes stay
    assert search_ids(search_engine, org.tenant, "Deleted later") == [message.pk]
    assert search_ids(search_engine, org.tenant, "folder:Inbox") == []  # not in the folder any more
    assert folder_tree(org.tenant, "erin@contoso.com") == []
    # Erin still sees what was in her mailbox.
    assert archive_access.message_for(membership_of(org.user), message.pk) == message
    assert record_deletion(org.tenant, "erin@contoso.com", "unknown") is False
    # Restored from the recoverable items: filed again.
    assert record_folder_change(org.tenant, "erin@contoso.com", "D-1", "Inbox") is True
    assert MessageSource.objects.get(graph_id="D-1").deleted_at is None


@pytest.mark.django_db
def test_the_folder_tree_counts_each_folders_items_and_fills_in_parents(org):
    store_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Inbox", "T-1", mail("t1@x", "1")),
            Item("mail", "alice@contoso.com", "Inbox/Projects/Q3", "T-2", mail("t2@x", "2")),
            Item("mail", "alice@contoso.com", "Inbox/Projects/Q3", "T-3", mail("t3@x", "3")),
            Item("mail", "alice@contoso.com", "archive", "T-4", mail("t4@x", "4")),
            Item("mail", "erin@contoso.com", "Inbox", "T-5", mail("t5@x", "5")),
            Item("event", "alice@contoso.com", "Calendar", "T-6", EVENT),
        ],
    )
    tree = folder_tree(org.tenant, "ALICE@contoso.com")
    assert [(n.name, n.count, n.total) for n in tree] == [("archive", 1, 1), ("Inbox", 1, 3)]
    projects = tree[1].children[0]
    assert (projects.path, projects.count, projects.total) == ("Inbox/Projects", 0, 2)
    assert projects.children == [FolderNode("Q3", "Inbox/Projects/Q3", 2, [], 2)]
    assert build_tree({}) == []


# --- events and contacts -----------------------------------------------------------


@pytest.mark.django_db
def test_events_and_contacts_are_archived_as_their_own_kinds_and_searchable(org, search_engine):
    event_id, contact_id = archive_items(
        org.tenant,
        [
            Item("event", "alice@contoso.com", "Calendar", "EV-1", EVENT),
            Item("contact", "alice@contoso.com", "Contacts", "CT-1", CONTACT, received=CARD_SAVED),
            Item("mail", "alice@contoso.com", "Inbox", "ML-1", mail("budget@contoso.com", "Budget review minutes")),
        ],
    )[:2]
    event, contact = message_of(org.tenant, event_id), message_of(org.tenant, contact_id)
    assert (event.kind, event.subject, event.from_addresses, event.to) == (
        "event",
        "Budget review",
        ["alice@contoso.com"],
        ["bob@contoso.com"],
    )
    assert event.date.isoformat() == "2026-03-10T14:00:00+00:00"
    assert event.details["location"] == "Room 4, Building 2"
    assert event.details["end"] == "2026-03-10T15:00:00+00:00"
    assert (contact.kind, contact.subject, contact.date) == ("contact", "Carl Contractor", CARD_SAVED)
    assert contact.details["emails"] == ["carl@northwind.example"]
    assert contact.details["phones"] == [{"number": "+1 555 0100", "type": "work"}]
    assert contact.details["company"] == "Northwind Traders; Purchasing"

    def found(query: str) -> list[int]:
        return search_ids(search_engine, org.tenant, query)

    assert found("kind:event") == [event.pk]
    assert found("kind:event budget") == [event.pk]
    assert found("kind:event hiring plan") == [event.pk]  # the description, unfolded
    assert found("kind:event from:alice@contoso.com to:bob@contoso.com") == [event.pk]
    assert found("kind:contact northwind") == [contact.pk]
    assert found("kind:contact carl@northwind.example") == [contact.pk]
    assert found("kind:contact 0100") == [contact.pk]
    assert len(found("budget")) == 2 and len(found("kind:mail budget")) == 1


@pytest.mark.django_db
def test_an_event_or_contact_opens_on_the_message_page_and_downloads_as_itself(client, org):
    event_id, contact_id = archive_items(
        org.tenant,
        [
            Item("event", "alice@contoso.com", "Calendar", "EV-2", EVENT),
            Item("contact", "alice@contoso.com", "Contacts", "CT-2", CONTACT),
        ],
    )
    event, contact = message_of(org.tenant, event_id), message_of(org.tenant, contact_id)
    client.force_login(org.owner)
    page = client.get(reverse("message", args=[event.pk])).content.decode()
    assert "Budget review" in page and "Location: Room 4, Building 2" in page
    assert "alice@contoso.com: Calendar" in page
    assert (
        'id="event-details"' in page
        and "2026-03-10T15:00:00+00:00" in page
        and "Bob &lt;bob@contoso.com&gt; (accepted)" in page
    )
    assert "Download original (.ics)" in page
    page = client.get(reverse("message", args=[contact.pk])).content.decode()
    assert 'id="contact-details"' in page and "+1 555 0100" in page and "Northwind Traders" in page
    download = client.get(reverse("api-message-eml", args=[contact.pk]))
    assert download["Content-Type"] == "text/vcard"
    assert b"".join(download.streaming_content if download.streaming else [download.content]) == CONTACT


# --- who sees what -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_plain_user_sees_the_items_of_her_own_mailbox_and_no_one_elses(org, outsider, search_engine):
    # Erin got this through a distribution list: her address is in no header.
    [hers] = archive_items(
        org.tenant,
        [
            Item(
                "mail",
                "erin@contoso.com",
                "Inbox",
                "W-1",
                mail("list-1@fabrikam.com", "Via the list", "news@fabrikam.com", "all@contoso.com"),
            )
        ],
    )
    [not_hers, contact] = archive_items(
        org.tenant,
        [
            Item(
                "mail",
                "alice@contoso.com",
                "Inbox",
                "W-2",
                mail("private-1@contoso.com", "Alice only", "bob@contoso.com", "alice@contoso.com"),
            ),
            # A card about Erin in Alice's contacts is Alice's, not Erin's.
            Item(
                "contact",
                "alice@contoso.com",
                "Contacts",
                "W-3",
                CONTACT.replace(b"carl@northwind.example", b"erin@contoso.com"),
            ),
        ],
    )
    erin = membership_of(org.user)
    hers_message, alices, card = (message_of(org.tenant, q) for q in (hers, not_hers, contact))
    scope = archive_access.search_scope(erin)
    search_engine.refresh()
    assert search_engine.search(scope, "").ids == [hers_message.pk]
    assert search_engine.search(scope, "folder:Inbox").ids == [hers_message.pk]
    assert archive_access.message_for(erin, hers_message.pk) == hers_message
    for other in (alices, card):
        with pytest.raises(Exception, match="no such message"):
            archive_access.message_for(erin, other.pk)
    assert [mailbox for mailbox, _ in archive_access.folder_trees(erin)] == ["erin@contoso.com"]
    # Admins see every mailbox's items; the outsider nothing of Contoso's.
    admin_scope = archive_access.search_scope(membership_of(org.admin))
    assert set(search_engine.search(admin_scope, "folder:Inbox").ids) == {hers_message.pk, alices.pk}
    assert archive_access.folder_trees(membership_of(outsider)) == []
    with pytest.raises(Exception, match="no such message"):
        archive_access.message_for(membership_of(outsider), hers_message.pk)


@pytest.mark.django_db
def test_a_plain_user_cannot_search_where_others_filed_a_message_she_received(org, search_engine):
    raw = mail("filed-1@contoso.com", "Filed by Alice", "alice@contoso.com", "erin@contoso.com")
    [queue_id] = archive_items(org.tenant, [Item("mail", "alice@contoso.com", "Secret Deal", "S-1", raw)])
    message = message_of(org.tenant, queue_id)
    erin = membership_of(org.user)
    search_engine.refresh()
    assert search_engine.search(archive_access.search_scope(erin), "Filed").ids == [message.pk]  # she received it
    assert search_engine.search(archive_access.search_scope(erin), 'folder:"Secret Deal"').ids == []
    assert archive_access.sources_for(erin, message) == []  # neither the folder nor the journal's ids


@pytest.mark.django_db
def test_the_message_page_lists_the_sources_each_role_may_see(client, org):
    journal = archive(org.tenant, corpus("01-simple.eml"))
    copy = mailbox_copy_of_journal_original("01-simple.eml")
    archive_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Sent Items", "P-1", copy),
            Item("mail", "erin@contoso.com", "Inbox/Projects", "P-2", b"X-Copy: erin\r\n" + copy),
        ],
    )
    url = reverse("message", args=[journal.message_id])
    client.force_login(org.auditor)
    page = client.get(url).content.decode()
    assert f"journal (queue id <code>{journal.queue_id}</code>)" in page
    assert "alice@contoso.com: Sent Items" in page and "erin@contoso.com: Inbox/Projects" in page
    client.force_login(org.user)
    page = client.get(url).content.decode()
    assert "erin@contoso.com: Inbox/Projects" in page
    assert "Sent Items" not in page and journal.queue_id not in page


@pytest.mark.django_db(transaction=True)
def test_two_imports_storing_the_same_items_at_once_record_each_item_once(org):
    """Two workers of a resumed import racing on one page of items: the unique
    constraint settles it, and both get the queue ids that were recorded."""
    import threading

    from django.db import connection

    raws = [mail(f"race-{n}@contoso.com", f"Race {n}") for n in range(40)]
    barrier = threading.Barrier(3)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def store() -> None:
        try:
            items = [Item("mail", "alice@contoso.com", "Inbox", f"R-{n}", raw) for n, raw in enumerate(raws)]
            barrier.wait()
            results.append(store_items(org.tenant, items))
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0] == results[1] == results[2]
    assert MessageSource.objects.filter(tenant=org.tenant).count() == 40
    recorded = set(Delivery.objects.filter(tenant=org.tenant, source="mailbox").values_list("queue_id", flat=True))
    assert recorded == set(results[0])


@pytest.mark.django_db
def test_the_search_page_shows_the_users_own_folder_tree_with_folder_searches(client, org, outsider):
    archive_items(
        org.tenant,
        [
            Item("mail", "erin@contoso.com", "Inbox/Sent Items", "N-1", mail("tree-1@contoso.com", "Tree one")),
            Item("mail", "alice@contoso.com", "Board Papers", "N-2", mail("tree-2@contoso.com", "Tree two")),
        ],
    )
    client.force_login(org.user)
    page = client.get(reverse("search")).content.decode()
    assert 'id="folder-tree"' in page and "erin@contoso.com" in page
    assert "?q=folder%3A%22Inbox/Sent%20Items%22" in page
    assert "Board Papers" not in page
    found = client.get(reverse("search"), {"q": 'folder:"Inbox/Sent Items"'}).content.decode()
    assert "Tree one" in found and "Tree two" not in found
    client.force_login(outsider)
    assert 'id="folder-tree"' not in client.get(reverse("search")).content.decode()


@pytest.mark.django_db
def test_imported_items_do_not_pass_for_journal_reports_in_the_setup_checks(org):
    from regions.current import current_region
    from web.setup import setup_checks

    store_items(org.tenant, [Item("mail", "alice@contoso.com", "Inbox", "J-1", mail("setup-1@contoso.com", "Old"))])
    assert setup_checks(org.tenant, current_region()).last_journal_report is None
    journal = archive(org.tenant, corpus("01-simple.eml"))
    assert setup_checks(org.tenant, current_region()).last_journal_report == journal.received_at


@pytest.mark.django_db
def test_items_are_stored_the_same_way_on_s3(use_s3, org, tmp_path):
    raw = mail("s3-1@contoso.com", "On S3")
    large = raw + b"x" * 300_000 + b"\r\n"
    spool = tmp_path / "large.eml"
    spool.write_bytes(large)
    small_id, large_id = store_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Inbox", "S3-1", raw),
            Item("mail", "alice@contoso.com", "Inbox", "S3-2", spool),
        ],
    )
    assert not spool.exists()
    small, big = (Delivery.objects.get(queue_id=q) for q in (small_id, large_id))
    assert small.storage_key.startswith("pack/") and big.storage_key.startswith("raw/")
    assert small.read_report() == raw and big.read_report() == large
    assert use_s3.client.head_object(Bucket=org.tenant.bucket, Key=big.storage_key)["ContentLength"] == len(large)
    process_deliveries([small.pk, big.pk], index=True)
    assert message_of(org.tenant, large_id).subject == "On S3"


@pytest.mark.django_db
@pytest.mark.parametrize("reparse", [False, True])
def test_a_reindex_carries_kinds_and_folders(org, search_engine, reparse):
    import io

    from django.core.management import call_command

    archive_items(
        org.tenant,
        [
            Item("mail", "alice@contoso.com", "Inbox/Projects", "X-1", mail("reindex-1@contoso.com", "Reindexed")),
            Item("event", "alice@contoso.com", "Calendar", "X-2", EVENT),
            Item("contact", "alice@contoso.com", "Contacts", "X-3", CONTACT),
        ],
    )
    search_engine.delete_tenant(org.tenant.pk)  # a lost index
    assert search_ids(search_engine, org.tenant, "") == []
    call_command("reindex", "--tenant", "Contoso", *(["--reparse"] if reparse else []), stdout=io.StringIO())
    subjects = dict(Message.objects.filter(tenant=org.tenant).values_list("pk", "subject"))

    def found(query: str) -> list[str]:
        return [subjects[pk] for pk in search_ids(search_engine, org.tenant, query)]

    assert found("folder:inbox/projects") == ["Reindexed"]
    assert found("kind:event hiring") == ["Budget review"]  # the text, read again from the iCalendar with --reparse
    assert found("kind:contact northwind") == ["Carl Contractor"]
