"""Acknowledged mail is never left waiting for the requeue window.

A delivery is marked enqueued only once its task is published, and a
starting committer (the ingest's, or one restarted after kill -9) or worker
sweeps at once: whatever got 250 but was never published is published then,
not 15 minutes later.  The broker here is the real Redis behind a proxy that
can hold connections (a broker that hangs) and then let them through.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import redis
from django.utils import timezone

from archive.models import Message
from ingest.delivery import stranded_deliveries, sweep
from ingest.models import Delivery
from search.backends.base import SearchBackend, SearchUnavailable
from tests.archive_support import deliver, process
from tests.smtp_support import journal_address, send
from tests.test_ingest_process import MESSAGE, committer_of, ingest_process, start_worker  # noqa: F401 (fixture)


class BrokerProxy:
    """A TCP proxy to Redis that holds every connection (a hung broker) until `open()`."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.passing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.passing.is_set():
                self.held.append(client)  # accepted, never answered
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def open(self) -> None:
        """From now on, connections go through; the held ones are dropped."""
        self.passing.set()
        for sock in self.held:
            sock.close()

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def broker(redis_broker):
    """(proxy, its broker URL, a client of the real Redis database behind it)."""
    url = urlsplit(redis_broker)
    proxy = BrokerProxy((url.hostname, url.port or 6379))
    client = redis.Redis.from_url(redis_broker)
    client.delete("celery")  # tasks of earlier runs name the same ids (each run has a fresh database)
    yield proxy, f"redis://127.0.0.1:{proxy.port}{url.path}", client
    proxy.close()


def published_delivery_ids(client: redis.Redis) -> set[int]:
    """Delivery ids in the processing tasks waiting in the broker's default queue."""
    found: set[int] = set()
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] != "archive.tasks.process_deliveries":
            continue
        args = json.loads(base64.b64decode(message["body"]))[0]
        found.update(args[0] if isinstance(args[0], list) else args)
    return found


def published_and_marked(row: Delivery, client: redis.Redis) -> bool:
    """Its task waits in the broker, and (just after publishing) the row says it was enqueued."""
    return row.pk in published_delivery_ids(client) and Delivery.objects.get(pk=row.pk).enqueued_at is not None


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def accepted_while_the_broker_hangs(process, proxy, tls_files, org) -> Delivery:
    """Send one message; it gets 250 and its publish hangs on the broker."""
    code, reply = send(process, tls_files, [journal_address(org.tenant)], MESSAGE)
    assert code == 250
    row = Delivery.objects.get(queue_id=reply.decode().split()[1])
    assert wait_for(lambda: proxy.held), "the committer never tried to publish"
    row.refresh_from_db()
    # Acknowledged and recorded, not yet published: not marked enqueued.
    assert row.status == Delivery.Status.STORED and row.enqueued_at is None
    return row


def test_a_message_acknowledged_before_a_kill_9_of_the_ingest_is_published_when_it_starts_again(
    ingest_process,  # noqa: F811
    broker,
    tls_files,
    org,
):
    proxy, url, client = broker
    process = ingest_process(CELERY_BROKER_URL=url)
    row = accepted_while_the_broker_hangs(process, proxy, tls_files, org)
    os.kill(committer_of(process.proc.pid), signal.SIGKILL)
    process.kill9()

    proxy.open()
    ingest_process(CELERY_BROKER_URL=url)  # the default 30 s grace and 60 s sweep interval do not apply
    assert wait_for(lambda: published_and_marked(row, client), timeout=20)


def test_a_message_acknowledged_before_a_kill_9_of_the_committer_is_published_by_its_successor(
    ingest_process,  # noqa: F811
    broker,
    tls_files,
    org,
):
    proxy, url, client = broker
    process = ingest_process(CELERY_BROKER_URL=url)
    row = accepted_while_the_broker_hangs(process, proxy, tls_files, org)
    first = committer_of(process.proc.pid)
    proxy.open()
    os.kill(first, signal.SIGKILL)
    # The ingest starts a new committer, whose start-up sweep publishes the message.
    assert wait_for(lambda: published_and_marked(row, client), timeout=20)
    assert committer_of(process.proc.pid) != first


def test_a_message_whose_publish_failed_is_published_by_the_next_sweep(org, settings, redis_broker, monkeypatch):
    """Not after the requeue window: after the sweep's grace only."""
    from ingest import delivery

    settings.ARCHIVA_SWEEP_GRACE = 0
    row = deliver(org.tenant, MESSAGE)
    assert row.enqueued_at is None  # recorded, not published

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    with monkeypatch.context() as patched:
        patched.setattr(delivery, "publish", broker_down)
        assert delivery.enqueue([row.pk]) is False
    row.refresh_from_db()
    assert row.enqueued_at is None
    assert list(stranded_deliveries()) == [row]
    assert sweep() == 1  # published to the real broker
    row.refresh_from_db()
    assert row.enqueued_at is not None and not stranded_deliveries().exists()


def test_indexing_that_could_not_be_scheduled_is_scheduled_by_the_next_sweep(org, settings, monkeypatch):
    from archive import tasks
    from ingest import delivery

    settings.ARCHIVA_SWEEP_GRACE = 0
    row = deliver(org.tenant, MESSAGE)
    # Its task was published: the mark `ingest.delivery.mark_enqueued` makes (no broker here).
    Delivery.objects.filter(pk=row.pk).update(enqueued_at=timezone.now())
    asked: list[str] = []

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    def search_down(self, docs):
        raise SearchUnavailable("connection refused")

    monkeypatch.setattr(tasks, "_next_schedule", 0.0)
    monkeypatch.setattr(delivery, "publish", broker_down)
    # The task's own indexing meets the search backend down too, so it asks for index_pending: refused.
    with monkeypatch.context() as patched:
        patched.setattr(SearchBackend, "index", search_down)
        assert tasks.process_deliveries.run([row.pk]) == 1
    row.refresh_from_db()
    assert Message.objects.get(pk=row.message_id).index_status == Message.IndexStatus.PENDING
    assert list(stranded_deliveries()) == [row]

    monkeypatch.setattr(delivery, "publish", lambda task, *a, **kw: asked.append(task))
    assert sweep() == 1
    assert asked == ["archive.tasks.index_pending"]
    row.refresh_from_db()
    assert row.enqueued_at is not None and not stranded_deliveries().exists()
    process(row.pk)  # indexes it here
    assert not stranded_deliveries().exists()


def test_a_starting_worker_processes_what_was_recorded_but_never_published_at_once(
    transactional_db, org, settings, tls_files, redis_broker, tmp_path
):
    """No beat runs here, and the delivery is younger than the sweep's 30 s grace:
    only the worker's start-up sweep can hand it over."""
    row = deliver(org.tenant, MESSAGE)
    assert row.enqueued_at is None
    worker = start_worker(settings, tls_files, redis_broker, tmp_path / "worker.log")
    try:
        archived = wait_for(lambda: Delivery.objects.get(pk=row.pk).status == Delivery.Status.ARCHIVED, timeout=60)
        assert archived, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)
