"""The auditor's view in a real browser: the audit log filtered by who and
what, its CSV downloaded through the page's link, and System Status saying
the audit chain is broken after a row was edited and naming a damaged stored
object.  Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import csv
import io

import pytest
from django.db import connection

from compliance.scrub import scrub_tenant
from tenants import audit
from tenants.models import AuditEvent
from tenants.tasks import audit_daily
from tests.archive_support import archive, report
from tests.conftest import PASSWORD, membership_of

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_login", email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_an_auditor_filters_exports_and_sees_the_integrity_of_the_log_and_the_bucket(page, shots, org, settings):
    bob = membership_of(org.admin)
    for i in range(3):
        audit.record_event(
            bob, AuditEvent.Action.SEARCH, {"query": f"budget {i}", "page": 1, "count": i}, ip="198.51.100.1"
        )
    audit.record_event(membership_of(org.auditor), AuditEvent.Action.VIEW, {"message": 7}, ip="198.51.100.2")
    message = archive(org.tenant, report("browser@fabrikam.com", "Kept", [("To", "erin@contoso.com")])).message

    sign_in(page, "dave@contoso.com")
    page.goto("/audit/")
    page.select_option("#audit-action", "search")
    page.fill("#audit-actor", "bob@contoso.com")
    page.click("#audit-filter button[type=submit]")
    rows = page.locator("#audit-events tbody tr")
    assert rows.count() == 3 and "budget 2" in rows.first.inner_text()
    shots(page, "audit-filtered")

    with page.expect_download() as download:
        page.click("#audit-csv")
    text = open(download.value.path(), encoding="utf-8").read()
    got = list(csv.DictReader(io.StringIO(text)))
    assert [row["action"] for row in got] == ["search"] * 3 and {row["actor"] for row in got} == {"bob@contoso.com"}

    # Someone edits a row in the database; the daily verification finds it.
    victim = AuditEvent.objects.filter(tenant=org.tenant, action="search").order_by("pk").first()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE archive_auditevent SET ip = %s WHERE id = %s", ["192.0.2.99", victim.pk])
    # The worker's pack of its original and its text: two objects missing.
    (settings.DATA_DIR / "buckets" / org.tenant.bucket / message.text_key).unlink()
    audit_daily()  # the beat's daily task: the day's root, then the verification
    scrub_tenant(org.tenant, whole=True)

    page.goto("/status/")
    chain = page.inner_text("#audit-chain-status")
    assert f"broken at event {victim.pk}" in chain
    assert "; 2 bad objects." in page.inner_text("#storage-scrub-status")
    assert message.text_key in page.inner_text("#scrub-findings")
    shots(page, "status-integrity-broken")
    assert page.console_errors == []
