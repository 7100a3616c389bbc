"""Putting mail into the archive the way production does, for tests.

`deliver` stores the bytes and records a Delivery with the ingest's own
committer step (`ingest.record.commit_batch`); `archive` then
runs the worker's one processing path on it (`archive.processing`: verify,
parse, merge, index) in this process.  The search backend is the embedded default, under DATA_DIR.
"""

from __future__ import annotations

import hashlib

import pytest

from archive.processing import process_deliveries
from ingest.directory import Route
from ingest.models import Delivery
from ingest.record import Envelope, Job, commit_batch, flush_paths
from tenants.models import Tenant
from tests.smtp_support import corpus_dir


def corpus(name: str) -> bytes:
    return (corpus_dir() / name).read_bytes()


def corpus_names() -> list[str]:
    return sorted(path.name for path in corpus_dir().glob("*.eml"))


def deliver(tenant: Tenant, raw: bytes, rcpt: list[str] | None = None) -> Delivery:
    """Store and record one received message for `tenant`, as the ingest does (not enqueued)."""
    sha256 = hashlib.sha256(raw).hexdigest()
    envelope = Envelope(
        mail_from="journal@contoso.com", peer_ip="127.0.0.1", helo="test", tls_version="", tls_cipher=""
    )
    route = Route(tenant.pk, tenant.bucket, tenant.region, None)
    for address in rcpt or [f"journal-x@{tenant.region}.test"]:
        envelope.add_recipient(route, address)
    [(_, error)], [pk] = commit_batch([Job(0, envelope, raw, sha256, len(raw))], flush_paths())
    assert error is None, error
    return Delivery.objects.get(pk=pk)


def process(delivery_id: int, index: bool = True) -> str:
    """Run the worker's processing on one delivery (a batch of one); the status
    it ends in.  Our own trouble (storage, search) raises, as a test wants to see it."""
    result = process_deliveries([delivery_id], index=index)
    if delivery_id in result.troubled:
        raise result.troubled[delivery_id]
    return result.status[delivery_id]


def archive(tenant: Tenant, raw: bytes, index: bool = True) -> Delivery:
    """Deliver and run the worker on it; returns the delivery as it ended."""
    delivery = deliver(tenant, raw)
    process(delivery.pk, index=index)
    delivery.refresh_from_db()
    return delivery


def received_at(delivery: Delivery, when) -> Delivery:
    """Time-shift: the delivery arrived at `when` (the ingest stamps the time now; it takes no clock)."""
    Delivery.objects.filter(pk=delivery.pk).update(received_at=when)
    delivery.received_at = when
    return delivery


def damage(delivery: Delivery) -> None:
    """Change the stored bytes in place, same length (bit rot, a slip by hand): no action does this."""
    from django.conf import settings

    stored = settings.DATA_DIR / "buckets" / delivery.tenant.bucket / delivery.storage_key
    stored.chmod(0o600)
    with stored.open("r+b") as packed:
        packed.seek(delivery.storage_offset + delivery.size - 10)
        packed.write(b"tampered\r\n")


def fail_verification(delivery: Delivery) -> Delivery:
    """A delivery whose stored bytes the worker found damaged: `failed`."""
    damage(delivery)
    process(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED, delivery.error
    return delivery


def padded_report(message_id: str, size: int) -> bytes:
    """A journal report of exactly `size` bytes (some 800 at least): its body is padded with lines of x."""
    recipients = [("To", "erin@contoso.com")]
    missing = size - len(report(message_id, "Padded", recipients, body=""))
    if missing < 0:
        raise ValueError(f"a journal report needs more than {size} bytes")
    line = "x" * 76 + "\r\n"
    raw = report(message_id, "Padded", recipients, body=line * (missing // len(line)) + "x" * (missing % len(line)))
    assert len(raw) == size
    return raw


def archive_corpus(tenant: Tenant) -> dict[str, Delivery]:
    """Every corpus file archived, then indexed in one batch as the workers do."""
    from archive.actions import index_pending

    delivered = {name: archive(tenant, corpus(name), index=False) for name in corpus_names()}
    index_pending()
    return delivered


def report(message_id: str | None, subject: str, recipients: list[tuple[str, str]], body: str = "Hello.") -> bytes:
    """A journal report in the shape Exchange sends; recipients are (kind, envelope line value)."""
    mid = f"<{message_id}>" if message_id else ""
    envelope = "\r\n".join(f"{kind}: {value}" for kind, value in recipients)
    header_to = ", ".join(value.split(",")[0] for kind, value in recipients if kind == "To")
    original = (
        f"From: Sam Sender <sam@fabrikam.com>\r\nTo: {header_to}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n"
        + (f"Message-ID: {mid}\r\n" if mid else "")
        + f"Content-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\n{body}\r\n"
    )
    return (
        f"From: sam@fabrikam.com\r\nTo: journal@archive.archiva.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{hashlib.sha1(envelope.encode()).hexdigest()}@journal.report.generator>\r\n"
        "X-MS-Journal-Report:\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\nMIME-Version: 1.0\r\n\r\n'
        "--b0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"Sender: sam@fabrikam.com\r\nSubject: {subject}\r\nMessage-Id: {mid}\r\n{envelope}\r\n"
        f"--b0\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--b0--\r\n"
    ).encode()


@pytest.fixture(name="backend")
def backend_fixture():
    """The embedded search backend; its index lives under DATA_DIR."""
    from search import get_backend

    return get_backend()


def search_ids(backend, tenant: Tenant, query: str, addresses: list[str] | None = None) -> list[int]:
    from search.backends.base import Scope

    backend.refresh()
    return backend.search(Scope(tenant.pk, addresses), query, limit=1000).ids
