"""The socket protocol between an ingest process and its committer."""

from __future__ import annotations

import pytest

from ingest import record
from ingest.commitd import frame, unframe


def test_committer_frames_survive_any_split_of_the_stream():
    messages = [(1, b"x" * 70_000, "a"), (2, b"", None), (3, list(range(5)), {"k": "v"})]
    wire = b"".join(frame(m) for m in messages)
    for step in (1, 3, 4096, len(wire)):
        buf, got = bytearray(), []
        for start in range(0, len(wire), step):
            buf += wire[start : start + step]
            got.extend(unframe(buf))
        assert got == messages and not buf


@pytest.mark.parametrize("in_transaction", [False, True], ids=["driver cursor", "inside atomic"])
def test_the_committers_insert_writes_the_same_rows_as_bulk_create(transactional_db, org, in_transaction):
    """insert_deliveries is the committer's fast path; bulk_create is the reference.
    The committer calls it outside any transaction (the driver's cursor, its
    own BEGIN and COMMIT); a script inside atomic() gets a savepoint."""
    import contextlib

    from django.db import transaction
    from django.forms.models import model_to_dict

    from ingest.directory import Route
    from ingest.models import Delivery
    from ingest.record import Envelope, delivery_values, insert_deliveries

    envelope = Envelope("ndr@contoso.com", "2001:db8::25", "mail.example", "TLSv1.3", "TLS_AES_256_GCM_SHA384")
    envelope.add_recipient(Route(org.tenant.pk, org.tenant.bucket, "us", None), "journal-x@archive.archiva.com")
    envelope.add_recipient(Route(org.tenant.pk, org.tenant.bucket, "us", None), "Ünïcode@archive.archiva.com")
    values = delivery_values(envelope, "Q1", "a" * 64, 123, {org.tenant.pk: ("raw/bb/" + "b" * 64, 77)})
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        ids = insert_deliveries([*values, {**values[0], "queue_id": "Q2"}])
    reference = Delivery.objects.bulk_create([Delivery(**{**values[0], "queue_id": "R1"})])[0]
    inserted = Delivery.objects.filter(queue_id__in=["Q1", "Q2"]).values_list("id", flat=True)
    assert len(ids) == 2 and set(ids) == set(inserted)
    fast = model_to_dict(Delivery.objects.get(queue_id="Q1"))
    slow = model_to_dict(Delivery.objects.get(pk=reference.pk))
    assert {k: v for k, v in fast.items() if k not in ("id", "queue_id")} == {
        k: v for k, v in slow.items() if k not in ("id", "queue_id")
    }
    assert fast["rcpt_to"] == ["journal-x@archive.archiva.com", "Ünïcode@archive.archiva.com"]
    assert fast["peer_ip"] == "2001:db8::25" and fast["status"] == Delivery.Status.STORED


def test_a_failed_insert_leaves_no_rows_and_the_connection_usable(transactional_db, org):
    """On the driver's cursor a failure (here a duplicate queue id) rolls the
    whole batch back, is raised as Django's error, and the next batch commits
    on the same connection."""
    from django.db import IntegrityError, connection

    from ingest.directory import Route
    from ingest.models import Delivery
    from ingest.record import Envelope, delivery_values, insert_deliveries

    envelope = Envelope("ndr@contoso.com", "192.0.2.25", "mail.example", "", "")
    envelope.add_recipient(Route(org.tenant.pk, org.tenant.bucket, "us", None), "journal-x@archive.archiva.com")
    row = delivery_values(envelope, "Q1", "a" * 64, 123, {org.tenant.pk: ("raw/bb/" + "b" * 64, 0)})[0]
    with pytest.raises(IntegrityError):
        insert_deliveries([row, {**row, "queue_id": "Q2"}, {**row, "queue_id": "Q1"}])
    assert not Delivery.objects.exists() and connection.get_autocommit() and not connection.in_atomic_block
    [pk] = insert_deliveries([{**row, "queue_id": "Q4"}])
    assert list(Delivery.objects.values_list("pk", "queue_id")) == [(pk, "Q4")]


def test_a_batch_is_one_pack_per_tenant_and_each_row_reads_back_its_own_message(db, org, settings, tmp_path):
    """Messages in memory go into one pack per bucket; a spooled message stays an object of its own."""
    import hashlib

    from infra.storage import raw_key
    from ingest import pack
    from ingest.directory import Route
    from ingest.models import Delivery
    from ingest.record import Envelope, Job, commit_batch, flush_paths
    from tenants.actions import create_tenant
    from tests.conftest import make_user

    other = create_tenant("Fabrikam", make_user("owner@fabrikam.example"))

    def envelope(*tenants):
        found = Envelope("ndr@contoso.com", "127.0.0.1", "mail.example", "", "")
        for tenant in tenants:
            found.add_recipient(Route(tenant.pk, tenant.bucket, tenant.region, None), f"journal-{tenant.pk}@x")
        return found

    bodies = [f"Subject: {n}\r\n\r\n{'x' * 100 * n}\r\n".encode() for n in range(4)]
    spooled = tmp_path / "in-large.eml"
    spooled.write_bytes(b"Subject: large\r\n\r\n" + b"y" * 300_000)
    large = spooled.read_bytes()
    jobs = [
        Job(0, envelope(org.tenant), bodies[0], hashlib.sha256(bodies[0]).hexdigest(), len(bodies[0])),
        Job(1, envelope(org.tenant, other), bodies[1], hashlib.sha256(bodies[1]).hexdigest(), len(bodies[1])),
        Job(2, envelope(other), bodies[2], hashlib.sha256(bodies[2]).hexdigest(), len(bodies[2])),
        Job(3, envelope(org.tenant), spooled, hashlib.sha256(large).hexdigest(), len(large)),
    ]
    outcomes, created = commit_batch(jobs, flush_paths())
    assert [error for _, error in outcomes] == [None] * 4 and len(created) == 5
    rows = list(Delivery.objects.select_related("tenant").filter(pk__in=created))
    expected = {0: bodies[0], 1: bodies[1], 2: bodies[2], 3: large}
    for row in rows:
        job = next(job for job in jobs if job.queue_id == row.queue_id)
        assert row.read_report() == expected[job.request_id]
    keys = {(row.tenant_id, row.storage_key) for row in rows}
    # Contoso: one pack (messages 0 and 1) and the spooled message; Fabrikam: one pack (1 and 2).
    assert len(keys) == 3
    large_row = next(row for row in rows if row.size == len(large))
    assert large_row.storage_key == raw_key(large_row.sha256) and large_row.storage_offset == 0
    assert not spooled.exists()
    for tenant, count in ((org.tenant, 2), (other, 2)):
        [key] = {row.storage_key for row in rows if row.tenant_id == tenant.pk and row != large_row}
        data = (settings.DATA_DIR / "buckets" / tenant.bucket / key).read_bytes()
        assert key.startswith("pack/") and pack.name_of(data) == key.rsplit("/", 1)[1]  # named by its index
        assert pack.matches_key(key, data) and not pack.matches_key(key, data + b"x")
        members = list(pack.members(data))
        assert len(members) == count
        assert {m.queue_id for m in members} == {row.queue_id for row in rows if row.storage_key == key}


def test_a_job_hashes_bytes_that_come_without_their_sha256_and_refuses_a_file_without_one(tmp_path):
    import hashlib

    from ingest.record import Envelope, Job

    envelope = Envelope("ndr@contoso.com", "127.0.0.1", "mail.example", "", "")
    body = b"Subject: x\r\n\r\nbody\r\n"
    assert Job(1, envelope, body, None, len(body)).sha256 == hashlib.sha256(body).hexdigest()
    assert Job(2, envelope, body, "f" * 64, len(body)).sha256 == "f" * 64  # given: taken as it is
    spooled = tmp_path / "in-1.eml"
    spooled.write_bytes(body)
    with pytest.raises(ValueError, match="spooled"):
        Job(3, envelope, spooled, None, len(body))


def test_queue_ids_are_unique_and_sort_by_time():
    import time

    from ingest.record import new_queue_id

    first = [new_queue_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_queue_id()
    assert len(set(first)) == 1000
    assert all(len(q) == 24 and q == q.upper() and int(q, 16) >= 0 for q in first)
    assert max(q[:11] for q in first) < later[:11]


def test_a_committer_serving_two_ingest_processes_answers_each_its_own_requests(transactional_db, org):
    """Outcomes come back in no particular order (failures first): each reply must
    still go to the connection its request came from, though request ids repeat.
    A message sent without its SHA-256 (held in the ingest's memory) is hashed
    by the committer, and the reply carries the hash."""
    import hashlib
    import socket

    from ingest.commitd import CommitService
    from ingest.models import Delivery
    from ingest.record import Job

    def request(bucket: str, body: bytes):
        return request_frame(Job(1, org_envelope(org, bucket), body, None, len(body)))

    ours_a, theirs_a = socket.socketpair()
    ours_b, theirs_b = socket.socketpair()
    service = CommitService(theirs_a, theirs_b)
    stored = b"Subject: stored\r\n\r\nfine\r\n"
    # Both requests wait in their sockets before the committer runs: one batch.
    ours_a.sendall(request(org.tenant.bucket, stored))
    ours_b.sendall(request("tenant-that-does-not-exist", b"Subject: refused\r\n\r\nno bucket\r\n"))
    ours_a.shutdown(socket.SHUT_WR)
    ours_b.shutdown(socket.SHUT_WR)
    service.run()  # returns once both connections have ended and their batch is answered

    def replies(sock) -> list:
        buf = bytearray()
        while chunk := sock.recv(65536):
            buf += chunk
        return unframe(buf)

    ready_a, [(id_a, queue_id, sha256_a, error_a)] = replies(ours_a)
    ready_b, [(id_b, refused, sha256_b, error_b)] = replies(ours_b)
    assert ready_a == ready_b == []
    assert id_a == id_b == 1
    assert queue_id and error_a is None and sha256_a == hashlib.sha256(stored).hexdigest()
    row = Delivery.objects.select_related("tenant").get(queue_id=queue_id)
    assert row.sha256 == sha256_a and row.read_report() == stored
    assert refused is None and sha256_b is None and "does not exist" in error_b


def test_a_batch_that_meets_an_unexpected_error_fails_alone_and_leaves_no_spool_file(
    transactional_db, org, monkeypatch, tmp_path
):
    """A database error before the batch's own error handling (the connection
    check) must answer that batch 451, not end the committer for every ingest."""
    import hashlib

    from django.db import OperationalError

    from ingest.record import GroupCommitter, Job

    envelope = org_envelope(org)
    spooled = tmp_path / "in-large.eml"
    spooled.write_bytes(b"Subject: large\r\n\r\n" + b"y" * 300_000)
    body = b"Subject: small\r\n\r\nhello\r\n"
    batch = [
        Job(1, envelope, body, hashlib.sha256(body).hexdigest(), len(body)),
        Job(2, envelope, spooled, hashlib.sha256(spooled.read_bytes()).hexdigest(), spooled.stat().st_size),
    ]

    def database_gone():
        raise OperationalError("server closed the connection unexpectedly")

    committer = GroupCommitter()
    try:
        monkeypatch.setattr(record, "close_old_connections", database_gone)
        outcomes = committer.commit(batch)
        assert [(job.request_id, type(error)) for job, error in outcomes] == [
            (1, OperationalError),
            (2, OperationalError),
        ]
        assert not spooled.exists()
        monkeypatch.undo()
        good = Job(3, envelope, body, hashlib.sha256(body).hexdigest(), len(body))
        assert committer.commit([good]) == [(good, None)]  # the next batch goes through
    finally:
        committer.close()


@pytest.mark.parametrize("after_commit", [True, False], ids=["sqlite", "postgresql"])
def test_the_flush_comes_before_the_rows_where_a_commit_is_durable_by_itself(
    transactional_db, org, monkeypatch, after_commit
):
    """PostgreSQL makes a COMMIT durable on its own: rows must not exist before
    their objects are flushed.  SQLite's WAL is not fsynced per commit, so there
    one flush after the commit covers both (and is the caller's)."""
    from ingest.models import Delivery
    from ingest.record import commit_batch

    rows_at_flush: list[int] = []
    monkeypatch.setattr(record, "flush_after_commit", lambda: after_commit)
    monkeypatch.setattr(record, "sync_filesystems", lambda paths: rows_at_flush.append(Delivery.objects.count()))
    outcomes, created = commit_batch([numbered_job(org, 1)], [])
    assert [error for _, error in outcomes] == [None] and len(created) == 1
    assert rows_at_flush == [1 if after_commit else 0]


def test_a_batch_is_answered_only_after_its_flush_and_a_failed_flush_answers_451(transactional_db, org, monkeypatch):
    """Each batch is stored, recorded, then flushed before its outcomes are
    returned; a failed flush answers its batch 451 (the rows are left to the
    sweep) and the committer goes on with the next batch."""
    from ingest.models import Delivery
    from ingest.record import GroupCommitter

    events: list[tuple[str, object]] = []
    failing = [False]

    def flush(paths):
        events.append(("flush, rows", Delivery.objects.count()))
        if failing[0]:
            raise OSError(5, "Input/output error")

    patch_commit_steps(monkeypatch, flush, lambda batch: events.append(("stored", batch[0].request_id)))
    committer = GroupCommitter()
    # Flushed after the COMMIT: SQLite's order (the test database is PostgreSQL).
    monkeypatch.setattr(record, "flush_after_commit", lambda: True)
    try:
        first = committer.commit([numbered_job(org, 1), numbered_job(org, 2)])
        failing[0] = True
        second = committer.commit([numbered_job(org, 3)])
        failing[0] = False
        third = committer.commit([numbered_job(org, 4)])
    finally:
        committer.close()
    assert [(job.request_id, error) for job, error in first] == [(1, None), (2, None)]
    assert [job.request_id for job, _ in second] == [3] and isinstance(second[0][1], OSError)
    assert [(job.request_id, error) for job, error in third] == [(4, None)]
    # Each flush comes after its batch's rows (the failed one's rows stay, for the sweep).
    assert events == [
        ("stored", 1),
        ("flush, rows", 2),
        ("stored", 3),
        ("flush, rows", 3),
        ("stored", 4),
        ("flush, rows", 4),
    ]


def test_requests_that_arrive_during_a_flush_wait_for_it_and_form_one_batch(transactional_db, org, monkeypatch):
    """Recording a batch costs about the same however small it is: while one
    flushes, the next requests gather in the socket, then go in as one batch."""
    import socket
    import threading
    import time

    from ingest.commitd import CommitService

    flushing = threading.Event()
    release = threading.Event()
    stored: list[list[int]] = []

    def slow_flush(paths):
        if not flushing.is_set():
            flushing.set()
            release.wait(10)

    patch_commit_steps(monkeypatch, slow_flush, lambda batch: stored.append([job.request_id for job in batch]))

    def request(n: int) -> bytes:
        return request_frame(numbered_job(org, n))

    ours, theirs = socket.socketpair()
    service = CommitService(theirs)
    monkeypatch.setattr(record, "flush_after_commit", lambda: True)  # SQLite's order: flushed after the rows
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        ours.sendall(request(1))
        assert flushing.wait(10)
        sent = [request(n) for n in (2, 3, 4)]
        for data in sent:
            ours.sendall(data)
        while unread(theirs) < sum(map(len, sent)):  # all three wait in the committer's socket
            time.sleep(0.01)
        time.sleep(0.05)  # the moment the committer would need to record them, were it not flushing
        assert stored == [[1]], stored
        release.set()
        ours.settimeout(10)
        frames, buf = [], bytearray()
        while sum(len(replies) for replies in frames) < 4:  # the ready frame ([]), then one per batch
            buf += ours.recv(65536)
            frames += unframe(buf)
    finally:
        release.set()
        ours.shutdown(socket.SHUT_WR)
        runner.join(10)
    assert stored == [[1], [2, 3, 4]]
    assert [sorted(request_id for request_id, _, _, error in replies if error is None) for replies in frames] == [
        [],
        [1],
        [2, 3, 4],
    ]


def test_a_full_chunk_of_recorded_deliveries_is_published_without_waiting_for_the_delay(
    transactional_db, org, monkeypatch
):
    """The publisher lets ids gather for PUBLISH_DELAY, unless a chunk's worth already waits."""
    import threading

    from ingest.record import GroupCommitter

    published: list[list[int]] = []
    done = threading.Event()

    def enqueue(ids):
        published.append(ids)
        if sum(map(len, published)) >= 4:
            done.set()
        return True

    monkeypatch.setattr(record, "PUBLISH_CHUNK", 3)
    monkeypatch.setattr(record, "PUBLISH_DELAY", 60.0)
    monkeypatch.setattr(record, "enqueue", enqueue)
    committer = GroupCommitter()
    try:
        for first in (1, 3):
            outcomes = committer.commit([numbered_job(org, first), numbered_job(org, first + 1)])
            assert [error for _, error in outcomes] == [None, None]
        assert done.wait(10), published  # not after the 60 s delay
    finally:
        committer.close()
    assert sorted(i for ids in published for i in ids) == sorted(record.Delivery.objects.values_list("pk", flat=True))


def test_under_load_recorded_deliveries_gather_into_bigger_chunks_and_at_light_load_they_do_not_wait(
    transactional_db, org, monkeypatch
):
    """PUBLISH_LOADED ids within PUBLISH_DELAY is load: the publisher then waits on
    (to PUBLISH_LOADED_DELAY) for a full PUBLISH_CHUNK, one task instead of several;
    fewer ids are published when PUBLISH_DELAY is up."""
    import threading
    import time

    from ingest.record import GroupCommitter

    published: list[list[int]] = []
    arrived = threading.Condition()

    def enqueue(ids):
        with arrived:
            published.append(ids)
            arrived.notify_all()
        return True

    def wait_for(count: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(published) >= count, timeout=10), published

    monkeypatch.setattr(record, "PUBLISH_CHUNK", 6)
    monkeypatch.setattr(record, "PUBLISH_DELAY", 0.2)
    monkeypatch.setattr(record, "PUBLISH_LOADED", 3)
    monkeypatch.setattr(record, "PUBLISH_LOADED_DELAY", 60.0)
    monkeypatch.setattr(record, "enqueue", enqueue)
    committer = GroupCommitter()
    try:
        committer.commit([numbered_job(org, 1), numbered_job(org, 2)])  # light load: two ids
        wait_for(1)  # after PUBLISH_DELAY, not a full chunk
        assert [len(ids) for ids in published] == [2]
        committer.commit([numbered_job(org, n) for n in (3, 4, 5, 6)])  # load: four ids at once
        time.sleep(1.0)  # well past PUBLISH_DELAY: still gathering
        assert [len(ids) for ids in published] == [2]
        committer.commit([numbered_job(org, 7), numbered_job(org, 8)])  # the chunk is full now
        wait_for(2)
        assert [len(ids) for ids in published] == [2, 6]
    finally:
        committer.close()
    assert sorted(i for ids in published for i in ids) == sorted(record.Delivery.objects.values_list("pk", flat=True))


def test_a_batch_is_committed_once_even_when_answering_it_fails(transactional_db, org, monkeypatch):
    """The committer's last-chance commit (when its loop ends on an error) takes
    only what was received and not yet committed."""
    import socket

    from ingest.commitd import CommitService

    ours, theirs = socket.socketpair()
    service = CommitService(theirs)
    committed: list[list[int]] = []
    real_commit = service.committer.commit

    def commit(batch):
        committed.append([job.request_id for job in batch])
        return real_commit(batch)

    def answer(owner, outcomes):
        raise RuntimeError("answering failed")

    monkeypatch.setattr(service.committer, "commit", commit)
    monkeypatch.setattr(service, "_answer", answer)
    ours.sendall(request_frame(numbered_job(org, 1)))
    with pytest.raises(RuntimeError, match="answering failed"):
        service.run()
    ours.close()
    assert committed == [[1]]


def test_an_ingest_process_that_stops_reading_does_not_hold_up_the_others(transactional_db, org):
    """One committer serves every ingest process of a host: replies that one
    process does not read wait in its outbox, and the others are answered."""
    import socket
    import threading

    from ingest.commitd import CommitService

    def request(n: int) -> bytes:
        return request_frame(numbered_job(org, n))

    wedged, wedged_end = socket.socketpair()
    live, live_end = socket.socketpair()
    for sock in (wedged, wedged_end):  # the smallest buffers: a few hundred replies fill them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    service = CommitService(wedged_end, live_end)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        live.settimeout(30)
        wedged.settimeout(30)  # a committer blocked on the wedged socket would stop reading this
        buf, frames = bytearray(), []
        while not frames:  # the ready frame
            buf += live.recv(65536)
            frames += unframe(buf)
        wedged.sendall(b"".join(request(n) for n in range(1, 401)))  # and never reads a reply
        live.sendall(request(1000))
        while not any(replies for replies in frames):
            buf += live.recv(65536)
            frames += unframe(buf)
        [[(request_id, queue_id, _, error)]] = [replies for replies in frames if replies]
        assert (request_id, error) == (1000, None) and queue_id
    finally:
        wedged.close()
        live.shutdown(socket.SHUT_WR)
        runner.join(30)
    assert not runner.is_alive()


def org_envelope(org, bucket: str | None = None):
    """An envelope from the loopback with one recipient of org's tenant (in `bucket`, if given)."""
    from ingest.directory import Route
    from ingest.record import Envelope

    envelope = Envelope("ndr@contoso.com", "127.0.0.1", "mail.example", "", "")
    route = Route(org.tenant.pk, bucket or org.tenant.bucket, org.tenant.region, None)
    envelope.add_recipient(route, "journal-x@archive.test")
    return envelope


def numbered_job(org, n: int):
    """Job n: a small message of its own to org's tenant."""
    import hashlib

    from ingest.record import Job

    body = f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()
    return Job(n, org_envelope(org), body, hashlib.sha256(body).hexdigest(), len(body))


def request_frame(job) -> bytes:
    """The job as an ingest process sends it to the committer."""
    return frame((job.request_id, job.envelope.to_wire(), job.message, job.sha256, job.size))


def patch_commit_steps(monkeypatch, flush, on_store) -> None:
    """The committer's flush replaced by `flush`; `on_store(batch)` after each batch is stored."""

    real_store = record._store

    def storing(batch):
        result = real_store(batch)
        on_store(batch)
        return result

    monkeypatch.setattr(record, "sync_filesystems", flush)
    monkeypatch.setattr(record, "_store", storing)


def unread(sock) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
