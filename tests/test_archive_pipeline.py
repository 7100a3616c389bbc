"""From a stored journal report to a searchable Message: the worker's pipeline.

Reports are stored and recorded with the ingest's own functions, then the
worker's processing (`archive.processing`, through its task) runs on them (verify, parse, merge, index) against the
real store, PostgreSQL and the embedded search backend.
"""

from __future__ import annotations

import io
import json
import threading
import uuid

import pytest
from django.core.management import call_command
from django.db import connection

from archive import actions, documents
from archive.models import Message
from archive.tasks import index_pending, process_deliveries
from infra.storage import IntegrityError, get_store
from ingest.delivery import stranded_deliveries
from ingest.models import Delivery
from search.backends.base import SearchBackend
from tests.archive_support import (
    archive,
    archive_corpus,
    backend_fixture,  # noqa: F401 (the `backend` fixture)
    corpus,
    corpus_names,
    deliver,
    process,
    report,
    search_ids,
)

_real_index = SearchBackend.index
scheduled: list[bool] = []


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """Tasks run here in-process: asking for a batch indexing run is only recorded."""
    scheduled.clear()
    monkeypatch.setattr("archive.tasks.schedule_indexing", lambda: scheduled.append(True))


def message_of(delivery: Delivery) -> Message:
    delivery.refresh_from_db()
    return Message.objects.get(pk=delivery.message_id)


def test_every_corpus_file_is_archived_indexed_and_found_by_its_subject(org, outsider, backend):
    delivered = archive_corpus(org.tenant)
    for name, delivery in delivered.items():
        assert delivery.status == Delivery.Status.ARCHIVED, (name, delivery.error)
        message = message_of(delivery)
        assert message.index_status == Message.IndexStatus.INDEXED, name
        assert message.pk in search_ids(backend, org.tenant, f'subject:"{message.subject}"'), name
    # 12 reports, two of them of one original.
    assert Message.objects.filter(tenant=org.tenant).count() == len(corpus_names()) - 1
    fabrikam = outsider.memberships.get().tenant
    assert search_ids(backend, fabrikam, "") == []


def test_the_original_is_stored_apart_from_its_report_and_read_back_verified(org, outsider):
    delivery = archive(org.tenant, corpus("05-binary-cte.eml"))
    message = message_of(delivery)
    original = documents.read_original(message)
    assert original.startswith(b"From: mia@contoso.com")
    assert "Café crème".encode() in original  # 8-bit body, byte for byte
    assert b"X-MS-Journal-Report" not in original
    assert message.original_sha256 != delivery.sha256  # the report is kept too, under its own hash
    assert get_store().exists(org.tenant.bucket, delivery.storage_key)


def test_a_batch_stores_its_originals_and_texts_in_one_pack_read_back_by_range(org, outsider, monkeypatch, settings):
    """One object per batch and bucket, not two per message; each member is
    checked against its own hash, and an object over PACK_LIMIT stays whole."""
    reports = [report(f"<pack-{n}@contoso.com>", f"Packed {n}", [("To", "erin@contoso.com")]) for n in range(3)]
    big = report("<big@contoso.com>", "Big one", [("To", "erin@contoso.com")], body="x" * 4000)
    monkeypatch.setattr(actions, "PACK_LIMIT", 3000)  # the big original and its text go alone
    ids = [deliver(org.tenant, raw).pk for raw in [*reports, big]]
    assert process_deliveries.run(ids) == 4
    messages = [message_of(Delivery.objects.get(pk=pk)) for pk in ids]
    small, [large] = messages[:3], messages[3:]

    [key] = {m.original_key for m in small} | {m.text_key for m in small}
    assert key.startswith("pack/") and get_store().exists(org.tenant.bucket, key)
    spans = sorted((m.original_offset, m.original_offset + m.original_size) for m in small)
    spans += sorted((m.text_offset, m.text_offset + m.text_size) for m in small)
    assert all(start < end for start, end in spans) and len(set(spans)) == 6
    for n, message in enumerate(small):
        assert f"Subject: Packed {n}".encode() in documents.read_original(message)
        assert json.loads(documents.read_object(message, "text"))["body"].startswith("Hello.")
    assert large.original_key == f"raw/{large.original_sha256[:2]}/{large.original_sha256}"
    assert large.text_key == f"text/{large.text_sha256[:2]}/{large.text_sha256}.json"
    assert (large.original_offset, large.original_size, large.text_offset, large.text_size) == (None,) * 4
    assert b"x" * 4000 in documents.read_original(large)

    # A byte flipped in one member fails that member's read alone.
    victim = small[1]
    path = settings.DATA_DIR / "buckets" / org.tenant.bucket / key
    data = bytearray(path.read_bytes())
    data[victim.original_offset + victim.original_size // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        documents.read_original(victim)
    assert b"Subject: Packed 0" in documents.read_original(small[0])
    assert documents.stored_content(victim).body  # its text, another member, still reads


def test_envelope_bcc_expansions_and_forwards_are_kept_and_make_participants(org, outsider, backend):
    message = message_of(archive(org.tenant, corpus("02-bcc-expanded-forwarded.eml")))
    envelope = {(r["address"], r["kind"], r["expanded"], r["forwarded"]) for r in message.envelope_recipients}
    assert ("dave@contoso.com", "bcc", None, None) in envelope
    assert ("erin@contoso.com", "to", "sales@contoso.com", None) in envelope
    assert ("gina@contoso.com", "cc", None, "carol@contoso.com") in envelope
    assert {
        "alice@contoso.com",
        "dave@contoso.com",
        "erin@contoso.com",
        "sales@contoso.com",
        "gina@contoso.com",
    } <= set(message.participants)
    # A plain user finds it through their own address, and only that way.
    assert search_ids(backend, org.tenant, "pricing", ["erin@contoso.com"]) == [message.pk]
    assert search_ids(backend, org.tenant, "pricing", ["zoe@contoso.com"]) == []
    assert search_ids(backend, org.tenant, "bcc:dave@contoso.com") == [message.pk]


def test_a_decrypted_copy_is_stored_and_its_text_indexed(org, outsider, backend):
    message = message_of(archive(org.tenant, corpus("07-decrypted-copy.eml")))
    assert message.has_decrypted and message.decrypted_sha256
    assert documents.read_object(message, "decrypted")
    assert search_ids(backend, org.tenant, '"41 dollars per share"') == [message.pk]


def test_two_reports_of_one_message_merge_with_the_union_of_recipients(org, outsider, backend):
    first = archive(org.tenant, corpus("09-duplicate-a.eml"))
    second = archive(org.tenant, corpus("09-duplicate-b.eml"))
    assert first.message_id == second.message_id
    message = message_of(first)
    assert message.merge_key == "mid:split-0009@fabrikam.com"
    assert {r["address"] for r in message.envelope_recipients} == {"tina@contoso.com", "uma@contoso.com"}
    assert message.version == 2 and message.index_status == Message.IndexStatus.INDEXED
    # Both reports stay stored as evidence, each linked to the one message.
    assert set(message.deliveries.values_list("pk", flat=True)) == {first.pk, second.pk}
    for delivery in (first, second):
        assert get_store().exists(org.tenant.bucket, delivery.storage_key)
    assert search_ids(backend, org.tenant, "to:uma@contoso.com") == [message.pk]
    assert search_ids(backend, org.tenant, "to:tina@contoso.com") == [message.pk]


def test_the_same_report_twice_changes_nothing(org, outsider, backend):
    delivery = archive(org.tenant, corpus("01-simple.eml"))
    message = message_of(delivery)
    assert process(delivery.pk) == Delivery.Status.ARCHIVED
    assert process_deliveries.apply(args=([delivery.pk],)).get() == 0  # archived already
    # The same bytes delivered again (Exchange retrying after a lost reply).
    again = archive(org.tenant, corpus("01-simple.eml"))
    assert again.message_id == message.pk
    after = message_of(delivery)
    assert (after.version, after.envelope_recipients, after.indexed_at) == (
        message.version,
        message.envelope_recipients,
        message.indexed_at,
    )
    assert Message.objects.filter(tenant=org.tenant).count() == 1
    assert search_ids(backend, org.tenant, "quarterly") == [message.pk]


def test_originals_without_a_message_id_dedupe_by_content_hash(org, outsider):
    one = archive(org.tenant, report(None, "No id", [("To", "tina@contoso.com")]))
    two = archive(org.tenant, report(None, "No id", [("To", "tina@contoso.com"), ("Bcc", "uma@contoso.com")]))
    other = archive(org.tenant, report(None, "No id", [("To", "tina@contoso.com")], body="Different."))
    assert one.sha256 != two.sha256
    message = message_of(one)
    assert message.merge_key.startswith("sha:") and message.merge_key == f"sha:{message.original_sha256}"
    assert two.message_id == message.pk != other.message_id
    assert {r["address"] for r in message_of(one).envelope_recipients} == {"tina@contoso.com", "uma@contoso.com"}


def test_the_same_message_in_two_tenants_is_two_messages(org, outsider, backend):
    fabrikam = outsider.memberships.get().tenant
    ours = message_of(archive(org.tenant, corpus("01-simple.eml")))
    theirs = message_of(archive(fabrikam, corpus("01-simple.eml")))
    assert ours.pk != theirs.pk and ours.merge_key == theirs.merge_key
    assert search_ids(backend, org.tenant, "quarterly") == [ours.pk]
    assert search_ids(backend, fabrikam, "quarterly") == [theirs.pk]


def test_a_report_that_breaks_the_parser_is_kept_shown_and_retried_after_a_fix(
    org, outsider, backend, monkeypatch, client
):
    from archive.parser import journal

    real = journal.parse_report

    def broken(raw, **kwargs):
        raise RuntimeError("parser bug: cannot cope")

    monkeypatch.setattr(journal, "parse_report", broken)
    delivery = archive(org.tenant, corpus("01-simple.eml"))
    assert delivery.status == Delivery.Status.PARSE_FAILED
    assert "parser bug: cannot cope" in delivery.error and delivery.message_id is None
    assert get_store().exists(org.tenant.bucket, delivery.storage_key)  # the report is kept
    assert process(delivery.pk) == Delivery.Status.PARSE_FAILED  # and not retried by itself

    client.force_login(org.auditor)
    status = client.get("/api/v1/status").json()
    assert status["parse_failed"] == 1
    assert status["failures"][0]["queue_id"] == delivery.queue_id
    assert "parser bug" in status["failures"][0]["reason"]
    assert "parser bug: cannot cope" in client.get("/status/").content.decode()

    monkeypatch.setattr(journal, "parse_report", real)  # the fix is deployed
    call_command("retry_failed", "--tenant", org.tenant.name, stdout=(out := io.StringIO()))
    assert "1 archived" in out.getvalue()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.ARCHIVED and delivery.error == ""
    assert search_ids(backend, org.tenant, "quarterly") == [delivery.message_id]
    assert client.get("/api/v1/status").json()["parse_failed"] == 0
    # The outsider's archive had nothing to do with it.
    client.force_login(outsider)
    assert client.get("/api/v1/status").json()["parse_failed"] == 0


def test_when_search_is_down_the_message_is_kept_and_indexed_once_it_is_back(org, outsider, backend, monkeypatch):
    from search.backends.base import SearchBackend, SearchUnavailable

    def down(self, docs):
        raise SearchUnavailable("connection refused")

    monkeypatch.setattr(SearchBackend, "index", down)
    delivery = deliver(org.tenant, corpus("01-simple.eml"))
    # The worker archives it and asks for a batch indexing run...
    assert process_deliveries.run([delivery.pk]) == 1
    assert scheduled
    message = message_of(delivery)
    assert message.index_status == Message.IndexStatus.PENDING
    # ...which finds search down and asks Celery to try again later, with backoff.
    retried = []
    monkeypatch.setattr(index_pending, "retry", lambda **kw: retried.append(kw) or RuntimeError("retry"))
    with pytest.raises(RuntimeError, match="retry"):
        index_pending.run()
    assert isinstance(retried[0]["exc"], SearchUnavailable) and 5 <= retried[0]["countdown"] <= 600
    assert message_of(delivery).index_status == Message.IndexStatus.PENDING

    monkeypatch.setattr(SearchBackend, "index", _real_index)
    assert index_pending.run() >= 1
    assert message_of(delivery).index_status == Message.IndexStatus.INDEXED
    assert search_ids(backend, org.tenant, "quarterly") == [message.pk]


def test_when_storage_fails_the_delivery_is_retried_and_the_sweep_leaves_it_alone(org, outsider, monkeypatch, settings):
    from infra.storage import FolderStore, StorageError

    settings.ARCHIVA_SWEEP_GRACE = 0
    delivery = deliver(org.tenant, corpus("01-simple.eml"))
    assert delivery.enqueued_at is None  # committed, its task not published (as after a kill)

    def failing(self, *args):
        raise StorageError("disk on fire")

    monkeypatch.setattr(FolderStore, "iter_bytes", failing)  # whole objects
    monkeypatch.setattr(FolderStore, "read_verified", failing)  # and ranges (packed reports)
    retried = []
    monkeypatch.setattr(process_deliveries, "retry", lambda **kw: retried.append(kw) or RuntimeError("retry"))
    with pytest.raises(RuntimeError, match="retry"):
        process_deliveries.run([delivery.pk])
    assert isinstance(retried[0]["exc"], StorageError)
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.STORED and delivery.enqueued_at is not None
    assert not stranded_deliveries().filter(pk=delivery.pk).exists()  # a retry is in flight
    monkeypatch.undo()
    assert process(delivery.pk) == Delivery.Status.ARCHIVED


def test_the_sweep_finds_reports_not_yet_archived_or_indexed(org, outsider, settings):
    from django.utils import timezone

    settings.ARCHIVA_SWEEP_GRACE = 0
    # None of them has a task published (as after a kill): the committer's publish never ran.
    waiting = deliver(org.tenant, corpus("01-simple.eml"))
    unindexed = archive(org.tenant, corpus("08-on-behalf-of.eml"), index=False)
    done = archive(org.tenant, corpus("06-exchange2003.eml"))
    assert unindexed.message.index_status == Message.IndexStatus.PENDING
    assert waiting.enqueued_at is None and unindexed.enqueued_at is None and done.enqueued_at is None
    stranded = set(stranded_deliveries(timezone.now()).values_list("pk", flat=True))
    assert {waiting.pk, unindexed.pk} <= stranded and done.pk not in stranded


def test_status_counts_archived_messages_and_the_indexing_backlog(org, outsider, client):
    archive(org.tenant, corpus("09-duplicate-a.eml"))
    archive(org.tenant, corpus("09-duplicate-b.eml"))
    deliver(org.tenant, corpus("01-simple.eml"))  # received, not yet processed
    client.force_login(org.user)
    data = client.get("/api/v1/status").json()
    assert data["messages_archived"] == 1  # two reports, one original
    assert data["indexing_backlog"] == 1
    html = client.get("/status/").content.decode()
    assert 'id="messages-archived">1<' in html and 'id="indexing-backlog">1<' in html
    client.force_login(outsider)
    assert client.get("/api/v1/status").json()["messages_archived"] == 0


@pytest.mark.django_db(transaction=True)
def test_two_workers_merging_reports_of_one_message_at_once_end_with_one_message(org, outsider, monkeypatch):
    """Both workers parse, then meet at the merge; the unique key and row locks sort it out."""
    real_fields = actions.documents.message_fields
    for _ in range(3):
        message_id = f"race-{uuid.uuid4().hex}@fabrikam.com"
        reports = [
            deliver(org.tenant, report(message_id, "Race", [("To", f"{name}@contoso.com")])) for name in ("tina", "uma")
        ]
        barrier = threading.Barrier(2, timeout=20)

        def meet(parsed, received_at, barrier=barrier):
            fields = real_fields(parsed, received_at)
            barrier.wait()
            return fields

        monkeypatch.setattr(actions.documents, "message_fields", meet)
        errors: list[Exception] = []

        def work(delivery_id, errors=errors):
            try:
                process(delivery_id)
            except Exception as exc:  # pragma: no cover - shown in the assertion
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=work, args=(d.pk,)) for d in reports]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        messages = Message.objects.filter(tenant=org.tenant, merge_key=f"mid:{message_id}")
        assert messages.count() == 1
        message = messages.get()
        assert {r["address"] for r in message.envelope_recipients} == {"tina@contoso.com", "uma@contoso.com"}
        assert message.version == 2
        assert set(message.deliveries.values_list("pk", flat=True)) == {d.pk for d in reports}


def test_a_batch_task_archives_each_delivery_and_retries_only_the_troubled_one(org, monkeypatch):
    """The ingest publishes one task per commit batch; one delivery's trouble holds up no other."""
    from archive import tasks
    from infra.storage import FolderStore, StorageError

    first, second = deliver(org.tenant, corpus("01-simple.eml")), deliver(org.tenant, corpus("03-attachments.eml"))
    real_read, retried = FolderStore.read_verified, []

    def flaky(self, bucket, key, sha256, *span):
        if sha256 == first.sha256:
            raise StorageError("bucket unreachable")
        return real_read(self, bucket, key, sha256, *span)

    monkeypatch.setattr(FolderStore, "read_verified", flaky)
    monkeypatch.setattr("ingest.delivery.publish", lambda task, args=(), countdown=None: retried.append((task, args)))
    assert tasks.process_deliveries.run([first.pk, second.pk]) == 1
    assert retried == [("archive.tasks.process_deliveries", ([first.pk],))]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Delivery.Status.STORED and second.status == Delivery.Status.ARCHIVED
    assert first.enqueued_at is not None  # when its retry is due: the sweep leaves it alone


def test_a_batch_archives_the_corpus_exactly_as_one_by_one(org, outsider):
    """Batch and one-by-one give the same messages: 09-a/b merged, every report linked."""
    fabrikam = outsider.memberships.get().tenant
    batch = [deliver(org.tenant, corpus(name)) for name in corpus_names()]
    single = [deliver(fabrikam, corpus(name)) for name in corpus_names()]
    assert process_deliveries.run([d.pk for d in batch]) == len(batch)
    for delivery in single:
        process(delivery.pk, index=False)

    def summary(tenant):
        return sorted(
            (m.merge_key, m.subject, m.deliveries.count(), sorted(r["address"] for r in m.envelope_recipients))
            for m in Message.objects.filter(tenant=tenant)
        )

    assert summary(org.tenant) == summary(fabrikam)
    assert Message.objects.filter(tenant=org.tenant).count() == len(batch) - 1  # 09-a and 09-b are one
    assert set(Delivery.objects.filter(tenant=org.tenant).values_list("status", flat=True)) == {"archived"}
    assert Delivery.objects.filter(tenant=org.tenant, originator_org="contoso.onmicrosoft.com").exists()
    # Running the batch again changes nothing.
    versions = dict(Message.objects.filter(tenant=org.tenant).values_list("pk", "version"))
    process_deliveries.run([d.pk for d in batch])
    assert dict(Message.objects.filter(tenant=org.tenant).values_list("pk", "version")) == versions


def test_a_batch_that_meets_a_concurrent_merge_runs_its_transaction_again(org, monkeypatch):
    from django.db import IntegrityError as UniqueViolation

    deliveries = [deliver(org.tenant, corpus(name)) for name in ("09-duplicate-a.eml", "09-duplicate-b.eml")]
    from archive import actions

    real_insert, calls = actions._insert_messages, []

    def other_worker_first(messages):
        """The first insert meets a message another worker committed meanwhile."""
        calls.append(len(messages))
        if len(calls) == 1:
            raise UniqueViolation("duplicate key value violates unique constraint")
        return real_insert(messages)

    monkeypatch.setattr(actions, "_insert_messages", other_worker_first)
    assert process_deliveries.run([d.pk for d in deliveries]) == 2
    assert calls == [1, 1]  # the batch's transaction ran once more
    message = Message.objects.get(tenant=org.tenant)
    assert message.deliveries.count() == 2


def test_a_tampered_report_in_a_batch_fails_alone(org, settings):
    bad, good = deliver(org.tenant, corpus("01-simple.eml")), deliver(org.tenant, corpus("08-on-behalf-of.eml"))
    path = settings.DATA_DIR / "buckets" / org.tenant.bucket / bad.storage_key
    path.chmod(0o600)
    path.write_bytes(b"tampered")
    assert process_deliveries.run([bad.pk, good.pk]) == 1
    bad.refresh_from_db()
    good.refresh_from_db()
    assert bad.status == Delivery.Status.FAILED and "do not match" in bad.error
    assert good.status == Delivery.Status.ARCHIVED


def test_a_batch_is_marked_indexed_in_one_update_per_version_and_a_message_merged_meanwhile_stays_pending(org):
    from django.test.utils import CaptureQueriesContext

    names = ("01-simple.eml", "03-attachments.eml", "04-non-ascii.eml")
    deliveries = [deliver(org.tenant, corpus(name)) for name in names]
    assert process_deliveries.run([d.pk for d in deliveries]) == 3
    messages = [message_of(d) for d in deliveries]
    pending = Message.IndexStatus.PENDING  # what a merge sets with its new version (`_merge_into`)
    Message.objects.filter(pk=messages[1].pk).update(version=2, index_status=pending)  # merged before built
    versions = [1, 2, 1]
    # The third is merged (a new report of it) after its document was built.
    Message.objects.filter(pk=messages[2].pk).update(version=2, index_status=pending)

    with CaptureQueriesContext(connection) as queries:
        actions.mark_indexed(messages, versions)

    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == len(set(versions))
    states = [Message.objects.get(pk=m.pk).index_status for m in messages]
    assert states == [Message.IndexStatus.INDEXED, Message.IndexStatus.INDEXED, Message.IndexStatus.PENDING]


INDEXING_WHILE_THE_INGEST_COMMITS = """
import threading
from archive import actions
from archive.tasks import process_deliveries
from ingest.models import Delivery
from search.backends.base import SearchBackend
from tenants.actions import create_tenant, create_user
from tests.archive_support import corpus, deliver

tenant = create_tenant("Embedded Inc", create_user("owner@embedded.example", None))
real_index = SearchBackend.index

def commits_while_indexing(work, name):
    \"\"\"Run `work` with the index held open (its commit and merges); can the ingest commit meanwhile?\"\"\"
    indexing, release, committed = threading.Event(), threading.Event(), threading.Event()

    def slow_index(self, documents):
        indexing.set()
        release.wait(60)
        return real_index(self, documents)

    SearchBackend.index = slow_index
    worker = threading.Thread(target=work)
    worker.start()
    assert indexing.wait(60)

    def ingest_commit():  # what the ingest's committer does for each batch: a write transaction
        deliver(tenant, f"Subject: meanwhile\\r\\nMessage-ID: <{name}@example>\\r\\n\\r\\nhi\\r\\n".encode())
        committed.set()

    threading.Thread(target=ingest_commit, daemon=True).start()
    print(name, committed.wait(20))
    release.set()
    worker.join(60)
    SearchBackend.index = real_index

ids = [deliver(tenant, corpus(name)).pk for name in ("01-simple.eml", "09-duplicate-a.eml")]
# The archiving task indexes the messages it created, after its transaction.
commits_while_indexing(lambda: process_deliveries.run(ids), "COMMITTED_WHILE_INDEXING_NEW")
merged = deliver(tenant, corpus("09-duplicate-b.eml")).pk  # a second report: a merge, left to index_pending
process_deliveries.run([merged])
print("PENDING", list(Delivery.objects.filter(pk=merged).values_list("message__index_status", flat=True)))
commits_while_indexing(actions.index_pending, "COMMITTED_WHILE_INDEXING_PENDING")
print("INDEXED", sorted(Delivery.objects.filter(pk__in=[*ids, merged]).values_list("message__index_status", flat=True)))
"""


def test_on_the_embedded_default_indexing_does_not_hold_the_ingests_commits(tls_files, tmp_path):
    """SQLite has one write lock: the indexing batch must not keep it while
    the index works, or every 250 of the ingest waits for the index."""
    from tests.test_ingest_process import embedded_env, embedded_manage

    manage = embedded_manage(embedded_env(tls_files, tmp_path))
    manage("migrate", "--noinput")
    out = manage("shell", "-c", INDEXING_WHILE_THE_INGEST_COMMITS)
    assert "COMMITTED_WHILE_INDEXING_NEW True" in out, out
    assert "PENDING ['pending']" in out, out
    assert "COMMITTED_WHILE_INDEXING_PENDING True" in out, out
    assert "INDEXED ['indexed', 'indexed', 'indexed']" in out, out


def test_the_archiving_task_indexes_the_documents_index_pending_would_build(org, monkeypatch):
    """The task indexes the messages it created from what it had in memory;
    each document is the one built from the stored text and the row (what
    `index_pending` and a rebuild index), for every corpus report in one batch
    (two reports of one message among them: merged in memory)."""
    from search import get_backend

    backend = get_backend()
    sent: list = []
    real_index = type(backend).index
    monkeypatch.setattr(type(backend), "index", lambda self, docs: sent.extend(docs) or real_index(self, docs))
    deliveries = [deliver(org.tenant, corpus(name)) for name in corpus_names()]
    archived = process_deliveries.run([d.pk for d in deliveries])
    messages = Message.objects.filter(tenant=org.tenant)
    assert archived > 10 and messages.count() < archived  # a merge among them
    assert sorted(doc.id for doc in sent) == sorted(messages.values_list("pk", flat=True))
    for doc in sent:
        message = Message.objects.get(pk=doc.id)
        assert message.index_status == Message.IndexStatus.INDEXED
        assert doc == documents.build_document(message, folders=documents.folder_values(message)), message.subject
    assert actions.index_pending() == 0


def test_when_the_index_is_down_the_archived_messages_wait_for_index_pending(org, monkeypatch):
    """Indexing in the archiving task meets a search backend that is down: the
    reports stay archived (not retried), their messages pending, an
    `index_pending` run is asked for, and it indexes them once the index is back."""
    from archive import tasks
    from search import get_backend
    from search.backends.base import SearchUnavailable

    backend = get_backend()
    real_index = type(backend).index

    def down(self, docs):
        raise SearchUnavailable("connection refused")

    monkeypatch.setattr(type(backend), "index", down)
    scheduled: list[bool] = []
    monkeypatch.setattr(tasks, "schedule_indexing", lambda: scheduled.append(True))
    deliveries = [deliver(org.tenant, corpus(name)) for name in ("01-simple.eml", "03-attachments.eml")]
    assert process_deliveries.run([d.pk for d in deliveries]) == 2
    assert scheduled == [True]
    assert {message_of(d).index_status for d in deliveries} == {Message.IndexStatus.PENDING}
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("status", flat=True)) == {
        Delivery.Status.ARCHIVED
    }
    monkeypatch.setattr(type(backend), "index", real_index)
    assert actions.index_pending() == 2
    assert {message_of(d).index_status for d in deliveries} == {Message.IndexStatus.INDEXED}
    assert sorted(search_ids(backend, org.tenant, "")) == sorted(message_of(d).pk for d in deliveries)
    # With the index up, a task that only created messages asks for no index_pending run.
    scheduled.clear()
    assert process_deliveries.run([deliver(org.tenant, corpus("04-non-ascii.eml")).pk]) == 1
    assert scheduled == []
