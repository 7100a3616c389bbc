"""The worker against hostile input and its own trouble, on PostgreSQL.

A NUL byte in any text of a report must not fail a batch (PostgreSQL text
and jsonb refuse it); any error in a batch falls back to one by one, so one
bad report never holds back another tenant's; what still fails is listed
with its reason on System Status.  The raw bytes stay as received.
"""

from __future__ import annotations

import pytest

from archive import actions
from archive.models import Message
from archive.tasks import process_deliveries
from ingest.models import Delivery
from tests import search_support
from tests.archive_support import deliver, search_ids
from tests.data_gen import wrap_as_journal

# Fixtures from tests/search_support.py: `backend` runs a test once per engine.
engine = search_support.engine
backend = search_support.backend
elasticsearch_url = search_support.elasticsearch_url
elasticsearch_backend = search_support.elasticsearch_backend

NUL = "\x00"


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """Tasks run in-process here; asking for a batch indexing run is only recorded."""
    monkeypatch.setattr("archive.tasks.schedule_indexing", lambda: None)


def nul_report() -> bytes:
    """A journal report with a NUL in every text the worker stores or indexes:
    subject, display name, addresses, attachment name and text, body,
    envelope fields, X-OriginatorOrg."""
    attachment_text = "x" * 2000 + f" a nul{NUL} inside the attachment text"
    original = (
        f"From: Ma{NUL}llory <mal{NUL}lory@fabrikam.com>\r\n"
        f"To: bob{NUL}@contoso.com, carol@contoso.com\r\n"
        f"Cc: dan@contoso.com{NUL}\r\n"
        f"Subject: Invoice{NUL} overdue\r\n"
        "Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n"
        f"Message-ID: <nul{NUL}-1@fabrikam.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Please pay{NUL} the invoice.\r\n"
        f'--b1\r\nContent-Type: text/plain; name="notes{NUL}.txt"\r\n'
        f'Content-Disposition: attachment; filename="notes{NUL}.txt"\r\n\r\n'
        f"{attachment_text}\r\n"
        "--b1--\r\n"
    ).encode()
    report = wrap_as_journal(
        original,
        envelope_lines=[
            f"Sender: mal{NUL}lory@fabrikam.com",
            f"On-Behalf-Of: boss{NUL}@fabrikam.com",
            f"Subject: Invoice{NUL} overdue",
            f"Message-Id: <nul{NUL}-1@fabrikam.com>",
            f"To: bob{NUL}@contoso.com, Expanded: team{NUL}@contoso.com",
            f"Bcc: eve@contoso.com, Forwarded: fwd{NUL}@contoso.com",
        ],
    )
    return report.replace(
        b"X-MS-Journal-Report:", f"X-OriginatorOrg: fab{NUL}rikam.com\r\nX-MS-Journal-Report:".encode()
    )


def clean_report(subject: str) -> bytes:
    original = (
        f"From: sam@fabrikam.com\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@fabrikam.com>\r\nDate: Mon, 02 Mar 2026 09:30:00 +0000\r\n\r\nHello.\r\n"
    ).encode()
    return wrap_as_journal(original, recipients=["alice@contoso.com"])


def texts_of(message: Message) -> list[str]:
    """Every text the Message row holds, JSON included."""
    found: list[str] = []

    def walk(value):
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for field in Message._meta.concrete_fields:
        walk(getattr(message, field.attname))
    return found


def test_a_nul_byte_in_every_text_field_is_archived_without_it_and_holds_back_no_other_tenant(org, outsider):
    fabrikam = outsider.memberships.get().tenant
    raw = nul_report()
    bad = deliver(org.tenant, raw)
    good = deliver(fabrikam, clean_report("quarterly-numbers"))
    assert process_deliveries.run([bad.pk, good.pk]) == 2
    bad.refresh_from_db()
    good.refresh_from_db()
    assert good.status == Delivery.Status.ARCHIVED
    assert bad.status == Delivery.Status.ARCHIVED, bad.error
    message = Message.objects.get(pk=bad.message_id)
    assert not [text for text in texts_of(message) if NUL in text]
    assert message.subject == "Invoice overdue"
    assert message.from_addresses == ["mallory@fabrikam.com"]
    assert "bob@contoso.com" in message.to
    assert {r["address"] for r in message.envelope_recipients} >= {"bob@contoso.com", "eve@contoso.com"}
    assert [a["name"] for a in message.attachments] == ["notes.txt"]
    assert bad.originator_org == "fabrikam.com"
    # The bucket keeps the bytes exactly as received, NUL and all.
    assert bad.read_report() == raw and b"\x00" in raw


def test_a_message_with_nul_bytes_is_indexed_and_found_in_every_search_backend(org, backend, monkeypatch):
    """Both engines, embedded and Elasticsearch (the `backend` fixture runs each)."""
    monkeypatch.setattr("search.get_backend", lambda: backend)
    backend.delete_tenant(org.tenant.pk)  # the Elasticsearch index is shared by the session's tests
    try:
        delivery = deliver(org.tenant, nul_report())
        assert process_deliveries.run([delivery.pk]) == 1
        assert actions.index_pending() == 0  # the task indexed the message it created, from memory
        delivery.refresh_from_db()
        message = Message.objects.get(pk=delivery.message_id)
        assert message.index_status == Message.IndexStatus.INDEXED, message.index_error
        for query in ("subject:invoice", "body:pay", "attachment:inside", "attachment:notes.txt", "from:mallory"):
            assert search_ids(backend, org.tenant, query) == [message.pk], query
    finally:
        backend.delete_tenant(org.tenant.pk)


def test_a_report_the_database_refuses_fails_alone_and_is_listed_with_its_reason(org, outsider, monkeypatch, client):
    """Any error in a batch, not only a NUL: the batch goes one by one, the
    others are archived, and the one that still fails shows on System Status."""
    from django.db import DataError

    fabrikam = outsider.memberships.get().tenant
    poison = deliver(org.tenant, clean_report("poison"))
    ours, theirs = deliver(org.tenant, clean_report("fine")), deliver(fabrikam, clean_report("theirs"))
    from archive import actions

    real_insert = actions._insert_messages

    def refuse(messages):
        if any(m.subject == "poison" for m in messages):
            raise DataError("value refused by the database")
        real_insert(messages)

    monkeypatch.setattr(actions, "_insert_messages", refuse)
    assert process_deliveries.run([poison.pk, ours.pk, theirs.pk]) == 2
    for delivery in (poison, ours, theirs):
        delivery.refresh_from_db()
    assert ours.status == theirs.status == Delivery.Status.ARCHIVED
    assert poison.status == Delivery.Status.PARSE_FAILED
    assert "could not be archived: DataError: value refused by the database" in poison.error

    client.force_login(org.auditor)
    status = client.get("/api/v1/status").json()
    assert [(f["queue_id"], "value refused" in f["reason"]) for f in status["failures"]] == [(poison.queue_id, True)]
    assert "could not be archived: DataError: value refused by the database" in client.get("/status/").content.decode()
    client.force_login(outsider)
    assert client.get("/api/v1/status").json()["failures"] == []


def test_a_document_the_search_backend_refuses_fails_alone_and_is_listed_with_its_reason(
    org, client, monkeypatch, tmp_path
):
    from search.backends.base import SearchError
    from search.backends.embedded import EmbeddedBackend

    class Refusing(EmbeddedBackend):
        """The embedded engine, refusing any request that carries one particular document."""

        def _index(self, docs):
            if any(doc.subject == "poison" for doc in docs):
                raise SearchError("document refused: poison")
            super()._index(docs)

    backend = Refusing(tmp_path / "index", lock_timeout=5.0, writer_heap=16_000_000)
    monkeypatch.setattr("search.get_backend", lambda: backend)
    poison, fine = deliver(org.tenant, clean_report("poison")), deliver(org.tenant, clean_report("fine"))
    assert process_deliveries.run([poison.pk, fine.pk]) == 2
    assert actions.index_pending() == 0  # the task indexed what it created (the poison one failed alone)
    poison_message = Message.objects.get(deliveries=poison)
    fine_message = Message.objects.get(deliveries=fine)
    assert fine_message.index_status == Message.IndexStatus.INDEXED
    assert search_ids(backend, org.tenant, "subject:fine") == [fine_message.pk]
    assert poison_message.index_status == Message.IndexStatus.FAILED
    assert poison_message.index_error == "document refused: poison"

    client.force_login(org.auditor)
    html = client.get("/status/").content.decode()
    assert 'id="index-failed">1<' in html and 'id="index-failures"' in html and "document refused: poison" in html
    client.force_login(org.user)  # a plain user sees the count, not other people's subjects
    assert 'id="index-failures"' not in client.get("/status/").content.decode()
