"""A journal address issued a moment ago is accepted at once, over real sockets.

The ingest's token cache refreshes every few seconds; a token it has not
loaded yet is looked up in the database before any 550, a token the
database does not have either is remembered for a few seconds, and a peer
that makes many such lookups is told to come back later (450).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ingest.directory import TokenDirectory
from ingest.models import Delivery
from ingest.policy import RateLimiter
from ingest.server import IngestServer, policy_from_settings
from ingest.stats import untenanted_rejections
from ingest.tls import server_context
from regions.current import current_region
from tenants.actions import create_tenant, rotate_journal_token
from tests.archive_support import corpus, process
from tests.conftest import make_user
from tests.smtp_support import connect, journal_address

LONG = 3600.0  # seconds between the cache's refreshes: none happens during a test


@pytest.fixture
def slow_cache_ingest(transactional_db, tls_files, org, outsider):
    """An ingest whose token cache loaded once and will not refresh during the test."""
    policy = policy_from_settings()
    policy.lookup_limiter = RateLimiter(rate=0.001, burst=3)
    server = IngestServer(
        "127.0.0.1",
        0,
        policy=policy,
        tls_context=server_context(tls_files.cert, tls_files.key),
        directory=TokenDirectory(refresh_interval=LONG),
    )
    server.start_in_thread()
    yield server
    server.stop_thread()


def unknown_address(n: int) -> str:
    return f"journal-{n:06d}{'Q' * 57}@{current_region().journal_domain}"


def test_a_tenant_created_while_the_ingest_runs_gets_250_at_once_and_its_report_archived(slow_cache_ingest, tls_files):
    tenant = create_tenant("Northwind", make_user("owner@northwind.example"))
    address = journal_address(tenant)
    raw = corpus("01-simple.eml")
    with connect(slow_cache_ingest, tls_files) as client:
        assert client.mail("ndr@northwind.example")[0] == 250
        code, reply = client.rcpt(address)
        assert (code, reply) == (250, b"2.1.5 OK")
        code, reply = client.data(raw)
    assert code == 250, reply
    delivery = Delivery.objects.get(queue_id=reply.decode().split()[1])
    assert delivery.tenant == tenant and delivery.rcpt_to == [address]
    assert process(delivery.pk, index=False) == Delivery.Status.ARCHIVED
    delivery.refresh_from_db()
    assert delivery.message.tenant == tenant
    # The lookup put the token in the cache: the next RCPT needs no query.
    assert slow_cache_ingest.directory.lookup(address.split("@")[0].removeprefix("journal-")).tenant_id == tenant.pk


def test_a_rotated_token_is_accepted_at_once(slow_cache_ingest, tls_files, org):
    rotate_journal_token(org.tenant)
    with connect(slow_cache_ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        assert client.rcpt(journal_address(org.tenant))[0] == 250


def test_an_unknown_token_is_still_550_and_remembered_as_missing(slow_cache_ingest, tls_files):
    address = unknown_address(1)
    with connect(slow_cache_ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        code, reply = client.rcpt(address)
        assert code == 550 and reply.startswith(b"5.1.1")
        # Asked again: answered from the negative cache, not counted as another lookup.
        for _ in range(5):
            assert client.rcpt(address)[0] == 550
    assert slow_cache_ingest.directory.known_missing(address.split("@")[0].removeprefix("journal-"))


def test_a_peer_guessing_many_tokens_gets_450_and_known_tokens_still_work(slow_cache_ingest, tls_files, org):
    with connect(slow_cache_ingest, tls_files) as client:
        client.mail("ndr@contoso.com")
        for n in range(3):  # the limiter's burst
            assert client.rcpt(unknown_address(n))[0] == 550
        code, reply = client.rcpt(unknown_address(99))
        assert code == 450 and reply.startswith(b"4.7.1"), reply
        assert client.rcpt(journal_address(org.tenant))[0] == 250  # the cache answers known tokens
    slow_cache_ingest.policy.rejections.flush()
    counted = untenanted_rejections(timezone.now() - timedelta(hours=1))
    assert counted == {"unknown_recipient": 3, "unknown_recipient_guessing": 1}
