"""Rate limits shared by ingest processes through ARCHIVA_CACHE_URL (Redis on 6379, db 12, a prefix per test)."""

from __future__ import annotations

import logging
import smtplib
import time
import uuid

import pytest
import redis

from ingest.policy import RateLimiter
from ingest.ratelimit import SharedRateLimiter, rate_limiter
from tests.servers import free_port
from tests.smtp_support import journal_address, start_ingest
from tests.test_ingest_process import ingest_process  # noqa: F401 (fixture)

CACHE_URL = "redis://127.0.0.1:6379/12"
MESSAGE = b"From: a@contoso.com\r\nTo: b@fabrikam.com\r\nSubject: limited\r\n\r\nhello\r\n"


@pytest.fixture
def prefix(redis_broker):
    name = f"test-ratelimit-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(CACHE_URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def rcpt_codes(port: int, tls_files, address: str, count: int) -> list[int]:
    """RCPT `count` times in one session (each accepted one followed by a message)."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("outbound.protection.outlook.com")
        client.starttls(context=tls_files.client_context())
        client.ehlo("outbound.protection.outlook.com")
        for _ in range(count):
            client.mail("ndr@contoso.com")
            code, _ = client.rcpt(address)
            codes.append(code)
            if code == 250:
                assert client.data(MESSAGE)[0] == 250
            else:
                client.rset()
    return codes


def test_two_ingest_processes_share_one_tenant_budget(ingest_process, tls_files, org, prefix):  # noqa: F811
    """Burst 10, no refill to speak of: 8 + 8 attempts on two processes get 10 through, not 16."""
    shared = {
        "ARCHIVA_CACHE_URL": CACHE_URL,
        "ARCHIVA_RATE_LIMIT_PREFIX": prefix,
        "ARCHIVA_TENANT_RATE": "0.001",
        "ARCHIVA_TENANT_BURST": "10",
    }
    first, second = ingest_process(**shared), ingest_process(**shared)
    address = journal_address(org.tenant)
    codes = rcpt_codes(first.port, tls_files, address, 8) + rcpt_codes(second.port, tls_files, address, 8)
    assert codes.count(250) == 10
    assert codes.count(451) == 6
    assert codes[:10] == [250] * 10  # the second process saw the first's spending
    assert redis.Redis.from_url(CACHE_URL).exists(f"{prefix}:us:tenant:{org.tenant.id}")


def test_without_a_cache_each_process_has_its_own_budget(ingest_process, tls_files, org):  # noqa: F811
    """The control: the same two processes without ARCHIVA_CACHE_URL let 16 through."""
    alone = {"ARCHIVA_CACHE_URL": "", "ARCHIVA_TENANT_RATE": "0.001", "ARCHIVA_TENANT_BURST": "10"}
    first, second = ingest_process(**alone), ingest_process(**alone)
    address = journal_address(org.tenant)
    codes = rcpt_codes(first.port, tls_files, address, 8) + rcpt_codes(second.port, tls_files, address, 8)
    assert codes.count(250) == 16


def test_an_unreachable_cache_refuses_no_mail_and_is_logged(transactional_db, tls_files, org, outsider, caplog):
    caplog.set_level(logging.WARNING, logger="ingest.ratelimit")
    limiter = SharedRateLimiter(f"redis://127.0.0.1:{free_port()}/0", "tenant", 0.001, 2, prefix="down")
    server = start_ingest(tls_files, policy={"tenant_limiter": limiter})
    try:
        codes = rcpt_codes(server.port, tls_files, journal_address(org.tenant), 5)
    finally:
        server.stop_thread()
    assert codes == [250] * 5  # a burst of 2 would have refused 3: the outage fails open
    assert limiter.failed_open == 5
    assert "shared rate limiter tenant unreachable" in caplog.text
    assert caplog.text.count("unreachable") == 1  # then left alone for retry_after seconds


def test_the_bucket_refills_at_the_rate_on_redis_time(prefix):
    # 2 a second: a pause of a loaded box between the 5th and 6th call (CI saw one
    # over 1 ms at 1,000/s) does not refill the bucket, and a token comes back within 0.5 s.
    limiter = SharedRateLimiter(CACHE_URL, "tenant", 2, 5, prefix=prefix)
    assert [limiter.allow("t1") for _ in range(5)] == [True] * 5
    assert limiter.allow("t1") is False
    assert limiter.allow("t2") is True  # another key, another bucket
    polls = 100
    while not limiter.allow("t1") and polls:
        time.sleep(0.05)
        polls -= 1
    assert polls > 0


def test_rate_zero_is_off_and_no_cache_means_per_process(prefix):
    assert isinstance(rate_limiter("tenant", 5, 10, cache_url="", prefix=prefix), RateLimiter)
    assert not isinstance(rate_limiter("tenant", 5, 10, cache_url="", prefix=prefix), SharedRateLimiter)
    assert isinstance(rate_limiter("tenant", 5, 10, cache_url=CACHE_URL, prefix=prefix), SharedRateLimiter)
    off = rate_limiter("peer", 0, 10, cache_url=CACHE_URL, prefix=prefix)
    assert all(off.allow("p") for _ in range(100))
