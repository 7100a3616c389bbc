"""Retention and legal hold in a real browser, as a new admin tries them:
place a hold, preview a retention rule, save it, have a second admin
approve it, run retention, and find the old mail gone except the held.
Screenshots go to test-artifacts/screenshots/retention-*.png.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from archive.models import Message
from tests.browser_support import new_page
from tests.test_m365_browser import sign_in
from tests.test_retention import DAY, archive_one

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_admin_sets_retention_with_a_second_approval_and_a_hold_keeps_its_mail(
    page, browser, live_server, shots, org, settings
):
    shots.prefix = "retention"
    settings.ARCHIVA_RETENTION_DELAY = 0
    tenant = org.tenant
    newsletter = archive_one(tenant, "newsletter spring", 60 * DAY)
    contract = archive_one(tenant, "contract draft", 900 * DAY)
    old = archive_one(tenant, "old project", 900 * DAY)
    recent = archive_one(tenant, "new project", 20 * DAY)

    sign_in(page, live_server, "alice@contoso.com")
    page.get_by_role("link", name="Legal holds").click()
    page.fill("#id_name", "Contoso v. Fabrikam")
    page.fill("#id_reason", "Litigation notice of 3 March")
    page.fill("#id_query", "contract")
    page.get_by_role("button", name="Place hold").click()
    assert "Contoso v. Fabrikam" in page.inner_text("#holds")
    shots(page, "holds")

    page.get_by_role("link", name="Retention").click()
    page.fill("#id_default_period", "2y")
    page.fill("#id_rules", "30d subject:newsletter")
    page.get_by_role("button", name="Preview").click()
    rows = page.locator("#retention-preview tbody tr")
    assert rows.nth(0).inner_text().split("\t")[-1].strip() == "1"  # the newsletter
    assert rows.nth(1).inner_text().split("\t")[-1].strip() == "1"  # the old project; the contract is held
    assert page.inner_text("#retention-preview-summary") == "2 messages in all; 1 expired message kept for legal holds."
    shots(page, "preview")
    page.get_by_role("button", name="Save").click()
    assert "another owner or admin must approve it" in page.inner_text("main")
    assert page.locator("#retention-waiting button", has_text="Approve").count() == 0  # not her own
    shots(page, "proposed")

    bob = new_page(browser, live_server)
    sign_in(bob, live_server, "bob@contoso.com")
    bob.goto(f"{live_server.url}/settings/retention/")
    bob.locator("#retention-waiting button", has_text="Approve").click()
    assert "Approved" in bob.inner_text("main")
    assert bob.inner_text("#retention-default") == "2y"
    shots(bob, "approved")

    out = io.StringIO()
    call_command("apply_retention", "--tenant", "Contoso", stdout=out)
    assert "deleted 2" in out.getvalue()
    left = set(Message.objects.filter(tenant=tenant).values_list("pk", flat=True))
    assert left == {contract.pk, recent.pk} and newsletter.pk not in left and old.pk not in left

    page.goto(f"{live_server.url}/messages/{contract.pk}/")
    assert "Contoso v. Fabrikam" in page.inner_text("#message-holds")
    shots(page, "held-message")
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/settings/retention/", "/holds/"):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    assert not page.console_errors  # type: ignore[attr-defined]
