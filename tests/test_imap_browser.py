"""IMAP journaling in a real browser, as an admin sets it up.

Microsoft 365 is connected already; the admin opens IMAP journaling from the
Microsoft 365 page, enters the (Dovecot) server and the journal mailbox,
tests the connection, switches it on; the poller archives the mailbox's
reports and the admin finds them in search.  A refused token shows on the
page and on System Status.  Screenshots: test-artifacts/screenshots/imap-*.png.
"""

from __future__ import annotations

import pytest

from imapjournal import access
from imapjournal.poller import poll_once
from ingest.models import Delivery
from tests.archive_support import process, report
from tests.conftest import PASSWORD
from tests.ms_support import connect

pytestmark = pytest.mark.django_db(transaction=True)
MAILBOX = "journal@contoso.com"


def test_an_admin_sets_up_imap_journaling_and_finds_the_reports(page, live_server, shots, org, ms_fake, dovecot):
    shots.prefix = "imap"
    connection = connect(ms_fake, org.tenant)
    ms_fake.grant_mailbox(str(connection.client_id), MAILBOX)
    for i in range(3):
        dovecot.deliver(MAILBOX, report(f"board-{i}@contoso.com", f"Board minutes {i}", [("To", "erin@contoso.com")]))

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_login", org.admin.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/status/")
    page.goto(f"{live_server.url}/settings/m365/")
    page.click("#imap-link")
    page.wait_for_url("**/settings/m365/imap/")
    assert page.input_value("#id_server") == "outlook.office365.com:993"
    assert page.locator("#imap-test").is_disabled()
    shots(page, "empty")

    page.fill("#id_server", f"127.0.0.1:{dovecot.port}")
    page.fill("#id_mailbox", "not an address")
    page.click("#save-imap")
    assert "valid email address" in page.inner_text("#imap-form")
    page.fill("#id_mailbox", MAILBOX)
    page.click("#save-imap")
    assert "IMAP journaling saved (off)." in page.inner_text("main")

    page.click("#imap-test")
    assert "Signed in to journal@contoso.com: 3 messages in INBOX." in page.inner_text("main")
    assert page.inner_text("#imap-test-count") == "3"
    shots(page, "tested")

    page.check("#id_enabled")
    page.click("#save-imap")
    assert "IMAP journaling is on." in page.inner_text("main")
    assert page.is_visible("#imap-waiting")

    journal = access.journal(org.tenant)
    assert poll_once(journal), journal.last_error  # what the `imap` process does
    ids = list(Delivery.objects.filter(tenant=org.tenant).values_list("pk", flat=True))
    assert [process(pk) for pk in ids] == [Delivery.Status.ARCHIVED] * 3  # what the worker does
    page.reload()
    assert page.inner_text("#imap-archived") == "3"
    assert page.is_visible("#imap-ok")
    assert dovecot.messages(MAILBOX) == []

    page.goto(f"{live_server.url}/search/?q=board")
    assert page.locator("#result-count").count() == 1, page.inner_text("main")
    assert "of 3 messages found" in page.inner_text("#result-count")
    shots(page, "found")

    ms_fake.revoke_mailbox(str(connection.client_id), MAILBOX)
    assert not poll_once(journal)
    page.goto(f"{live_server.url}/status/")
    assert "refused the app's token for journal@contoso.com" in page.inner_text("#imap-status")
    shots(page, "status-error")
    page.goto(f"{live_server.url}/settings/m365/imap/")
    assert "IMAP.AccessAsApp" in page.inner_text("#imap-error")
    assert page.console_errors == []
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
