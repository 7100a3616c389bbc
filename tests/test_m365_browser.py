"""Connecting Microsoft 365 in a real browser, as a new admin does it.

Enter the app's IDs, create a certificate, download its .cer and upload it
to the app in "Azure" (the fake), test the connection and see the
organization, domains and missing permissions; then sync the mailboxes.
Screenshots go to test-artifacts/screenshots/m365-*.png.
"""

from __future__ import annotations

import uuid

import pytest

from tenants.models import Domain
from tests.conftest import PASSWORD
from tests.ms_support import ALL_ROLES

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(page, live_server, address: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_login", address)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/status/")


def test_an_admin_connects_microsoft_365_in_the_browser(page, live_server, shots, org, ms_fake, tmp_path):
    shots.prefix = "m365"
    directory, app = str(uuid.uuid4()), str(uuid.uuid4())
    ms_fake.add_tenant(directory, "Contoso Ltd", domains=[("contoso.com", True)])
    ms_fake.register_app(directory, app, roles=ALL_ROLES - {"IMAP.AccessAsApp"})
    ms_fake.add_user(directory, "alice@contoso.com", "Alice", aliases=["a.smith@contoso.com"])
    ms_fake.add_user(directory, "sales@contoso.com", "Sales", mailbox="shared")
    sign_in(page, live_server, "alice@contoso.com")

    page.click("text=Microsoft 365")
    page.wait_for_url("**/settings/m365/")
    assert page.locator("#test-connection").is_disabled()
    shots(page, "empty")
    page.fill("#id_tenant_id", "not a guid")
    page.click("#save-connection")
    assert "GUID" in page.inner_text("#connection-form")
    page.fill("#id_tenant_id", directory)
    page.fill("#id_client_id", app)
    page.click("#save-connection")
    assert "Connection saved." in page.inner_text("main")

    page.click("#certificate-form >> xpath=.. >> summary")
    page.fill("#id_common_name", "Archiva Contoso")
    page.fill("#id_organization", "Contoso Ltd")
    page.fill("#id_country", "US")
    page.click("#create-certificate")
    assert "Download its .cer" in page.inner_text("main")
    shots(page, "certificate")
    with page.expect_download() as download:
        page.click("text=Download .cer")
    cer = tmp_path / "archiva.cer"
    download.value.save_as(cer)
    ms_fake.upload_certificate(app, cer.read_bytes())  # the admin uploads it in Azure

    page.click("#test-connection")
    main = page.inner_text("main")
    assert "Connected to Contoso Ltd." in main
    assert "contoso.onmicrosoft.com" in page.inner_text("#test-organization")
    assert "contoso.com" in page.inner_text("#test-domains")
    assert "IMAP.AccessAsApp" in page.inner_text("#test-missing")
    assert page.inner_text("#mailbox-count") == "2"
    assert Domain.objects.get(tenant=org.tenant, name="contoso.com").is_verified
    shots(page, "tested")

    page.click("#sync-now")
    assert "2 mailboxes synchronised" in page.inner_text("main")
    assert page.console_errors == []
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
    shots(page, "phone")
