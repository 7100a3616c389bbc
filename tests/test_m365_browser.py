"""Connecting Microsoft 365 in a real browser, as a new admin does it.

Enter the app's IDs, create a certificate, download its .cer and upload it
to the app in "Azure" (the fake), test the connection and see the
organization, domains and missing permissions; then sync the mailboxes.
Screenshots go to test-artifacts/screenshots/m365-*.png.
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import quote

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


def test_a_new_admin_connects_imports_and_sees_folders_events_and_a_move_in_search(
    page, live_server, shots, org, ms_fake, settings, redis_broker, tmp_path
):
    """The whole journey of issue 18 in Chromium: connect with a new certificate,
    test, switch folder sync on, import the mailbox with the progress moving,
    find mail by folder and the calendar item by kind, then move a message in
    "Outlook" (the fake) and find it in its new folder.  The worker's steps
    (import slices, archiving, indexing, notifications) run in the test, as a
    worker would run them."""
    from archive.actions import index_pending
    from m365.models import Connection
    from m365.sync import Notification
    from m365.tasks import process_notifications, reconcile_connection
    from tests.m365_import_support import archive_all
    from tests.test_m365_import import latest_import, run_in_thread, wait_until

    shots.prefix = "m365-journey"
    settings.SITE_ROOT = live_server.url  # where Graph posts its notifications (`/o365`)
    directory, app = str(uuid.uuid4()), str(uuid.uuid4())
    ms_fake.add_tenant(directory, "Contoso Ltd", domains=[("contoso.com", True)])
    ms_fake.register_app(directory, app, roles=ALL_ROLES - {"IMAP.AccessAsApp"})
    alice = ms_fake.add_user(directory, "alice@contoso.com", "Alice")
    moving = ms_fake.add_message(alice, "Inbox/Projects", _mime("Kestrel budget", "kestrel"))
    for n in range(40):
        ms_fake.add_message(alice, ("Inbox", "Inbox/Projects", "Sent Items")[n % 3], _mime(f"Weekly note {n}", f"w{n}"))
    ms_fake.add_event(alice, {"subject": "Board meeting zeppelin", "location": {"displayName": "Room 4"}})
    sign_in(page, live_server, "alice@contoso.com")

    # Connect: the IDs, a new certificate uploaded to "Azure", the test, folder sync on.
    page.goto(f"{live_server.url}/settings/m365/")
    page.fill("#id_tenant_id", directory)
    page.fill("#id_client_id", app)
    page.check("#id_sync_folders")
    page.click("#save-connection")
    page.click("#certificate-form >> xpath=.. >> summary")
    page.fill("#id_common_name", "Archiva Contoso")
    page.click("#create-certificate")
    with page.expect_download() as download:
        page.click("text=Download .cer")
    cer = tmp_path / "archiva.cer"
    download.value.save_as(cer)
    ms_fake.upload_certificate(app, cer.read_bytes())
    page.click("#test-connection")
    assert "Connected to Contoso Ltd." in page.inner_text("main")
    connection = Connection.objects.get(tenant=org.tenant)
    assert connection.sync_folders
    outcome = reconcile_connection(connection)  # the worker's reconcile: Graph validates our /o365 first
    assert (outcome.created, outcome.failed) == (1, 0)

    # Import, watching the numbers move.
    page.goto(f"{live_server.url}/settings/m365/import/")
    page.check("input[name=scope][value=all]")
    page.click("#import-start")
    page.wait_for_selector("#import-progress")
    ms_fake.latency = 0.01  # long enough to watch
    runner = threading.Thread(target=run_in_thread, args=(latest_import(org.tenant).pk,))
    runner.start()
    try:
        wait_until(lambda: page.inner_text("#messages-imported") not in ("0", ""), 30, "the count to move")
        shots(page, "import-moving")
    finally:
        runner.join(120)
    page.wait_for_selector("#import-form", timeout=20_000)
    assert page.inner_text("#messages-imported") == "41"
    archive_all(org.tenant)
    index_pending()

    # Search by folder and by kind; the folder tree of her own mailbox beside the results.
    page.goto(f"{live_server.url}/search/?q=" + quote('folder:"Inbox/Projects" kestrel'))
    assert "Kestrel budget" in page.inner_text("#results")
    assert "Inbox" in page.inner_text("#folder-tree")
    shots(page, "search-folder")
    page.goto(f"{live_server.url}/search/?q=" + quote("kind:event zeppelin"))
    assert "Board meeting zeppelin" in page.inner_text("#results")
    shots(page, "search-event")

    # A move in the mailbox arrives as a change notification at /o365 and changes the folder.
    ms_fake.move_message(alice, moving, "Archive/2026")
    wait_until(lambda: Notification.objects.filter(processed_at__isnull=True).exists(), 10, "the notification")
    process_notifications(list(Notification.objects.filter(processed_at__isnull=True).values_list("pk", flat=True)))
    archive_all(org.tenant)
    index_pending()
    page.goto(f"{live_server.url}/search/?q=" + quote('folder:"Archive/2026"'))
    assert "Kestrel budget" in page.inner_text("#results")
    page.goto(f"{live_server.url}/search/?q=" + quote('folder:"Inbox/Projects" kestrel'))
    assert "Kestrel budget" not in page.inner_text("main")
    page.goto(f"{live_server.url}/search/?q=" + quote('folder:"Archive/2026"'))
    page.click("text=Kestrel budget")
    assert "Archive/2026" in page.inner_text("main")  # the message page's sources: mailbox and folder
    shots(page, "moved")
    assert page.console_errors == []


def _mime(subject: str, tag: str) -> bytes:
    return (
        f"From: Bert <bert@fabrikam.com>\r\nTo: Alice <alice@contoso.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{tag}@fabrikam.com>\r\nDate: Sat, 05 Dec 2026 09:00:00 +0000\r\n\r\nFigures attached.\r\n"
    ).encode()
