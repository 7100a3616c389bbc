"""A message the database refuses to record fails alone, never the rest of its batch.

The committer records a batch's rows in one transaction; one bad row (here
a NUL byte in MAIL FROM, which PostgreSQL refuses in any text column; the
SMTP layer answers 501 to control characters, so this drives the committer
directly, as tests/test_commitd.py does) must not answer 451 to the other
tenants' messages that happened to share its batch.
"""

from __future__ import annotations

import hashlib

import pytest

from ingest.directory import Route
from ingest.models import Delivery
from ingest.record import Envelope, Job, commit_batch, flush_paths
from tenants.actions import create_tenant
from tests.conftest import make_user


def job(request_id: int, tenant, mail_from: str) -> Job:
    envelope = Envelope(mail_from, "192.0.2.25", "mail.example", "TLSv1.3", "")
    envelope.add_recipient(Route(tenant.pk, tenant.bucket, tenant.region, None), f"journal-{tenant.pk}@x")
    body = f"Subject: {request_id}\r\n\r\nbody {request_id}\r\n".encode()
    return Job(request_id, envelope, body, hashlib.sha256(body).hexdigest(), len(body))


def test_a_row_postgresql_refuses_fails_only_its_own_message(transactional_db, org):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the NUL byte is refused by PostgreSQL; set DATABASE_URL to a PostgreSQL database")
    fabrikam = create_tenant("Fabrikam", make_user("owner@fabrikam.example"))
    jobs = [
        job(0, fabrikam, "ndr@fabrikam.com"),
        job(1, org.tenant, "bad\x00sender@contoso.com"),
        job(2, org.tenant, "ndr@contoso.com"),
        job(3, fabrikam, "other@fabrikam.com"),
    ]
    outcomes, created = commit_batch(jobs, flush_paths())
    failed = {job.request_id for job, error in outcomes if error is not None}
    assert failed == {1} and len(outcomes) == 4
    recorded = Delivery.objects.filter(pk__in=created)
    assert sorted(recorded.values_list("queue_id", flat=True)) == sorted(jobs[n].queue_id for n in (0, 2, 3))
    for row in recorded.select_related("tenant"):
        assert row.read_report() == next(j.message for j in jobs if j.queue_id == row.queue_id)
    # The committer's connection is fine for the next batch.
    outcomes, created = commit_batch([job(4, org.tenant, "ndr@contoso.com")], flush_paths())
    assert [error for _, error in outcomes] == [None] and len(created) == 1


def test_a_batch_of_only_refused_rows_fails_every_message_and_records_nothing(transactional_db, org):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the NUL byte is refused by PostgreSQL; set DATABASE_URL to a PostgreSQL database")
    jobs = [job(0, org.tenant, "a\x00@contoso.com"), job(1, org.tenant, "b\x00@contoso.com")]
    outcomes, created = commit_batch(jobs, flush_paths())
    assert all(error is not None for _, error in outcomes) and created == []
    assert not Delivery.objects.exists()
