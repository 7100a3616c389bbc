"""The tenant portal in a real browser (Chromium through Playwright), against
a live server, a real SMTP ingest and a real DNS server on loopback.

One story, as a new customer lives it: sign up, follow the verification
link from the outbox, copy the journal address from System Status, verify
a domain, receive a journal report and the connector's validation mail,
see them in the checks and the charts, find the report in search, invite
a colleague who joins and sees only their own mail.  Every page is saved
as a screenshot under test-artifacts/screenshots/.
"""

from __future__ import annotations

import email
import re
import time
from email import policy

import pytest
from django.urls import NoReverseMatch, reverse

from ingest.models import Delivery
from tests.archive_support import process, report
from tests.browser_support import new_page
from tests.conftest import PASSWORD
from tests.smtp_support import send

pytestmark = pytest.mark.django_db(transaction=True)

CONFIRM_RE = re.compile(r"https?://[^/\s]+(/accounts/confirm-email/[^/\s]+/)")
JOIN_RE = re.compile(r"https?://[^/\s]+(/team/join/[^/\s]+/)")
GRACE = "grace@northwind.example"
FRANK = "frank@northwind.example"


@pytest.fixture
def outbox(settings, tmp_path):
    settings.EMAIL_BACKEND = "web.mail.OutboxBackend"
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"
    return settings.ARCHIVA_OUTBOX_DIR


def last_mail_link(outbox, pattern: re.Pattern) -> str:
    for path in sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        found = pattern.search(message.get_body(preferencelist=("plain",)).get_content())
        if found:
            return found.group(1)
    raise AssertionError(f"no mail in {outbox} has a link like {pattern.pattern}")


def send_until_accepted(ingest, tls_files, rcpts, data, sender, timeout=10.0):
    """The ingest's directory sees new tokens and domains within its refresh interval."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return send(ingest, tls_files, rcpts, data, sender=sender)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_worker():
    """What the Celery worker does with each new delivery: verify, unwrap, archive, index."""
    for delivery in Delivery.objects.filter(status=Delivery.Status.STORED):
        process(delivery.pk)


def search_exists() -> bool:
    try:
        reverse("search")
    except NoReverseMatch:
        return False
    return True


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def sign_up(page, shots, outbox):
    page.goto("/")
    shots(page, "home")
    page.get_by_role("link", name="Create your archive").click()
    assert "United States" in page.locator("#signup-region").inner_text()
    page.fill("#id_organization", "Northwind Traders")
    page.fill("#id_email", GRACE)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    shots(page, "sign-up")
    page.get_by_role("button", name="Create archive").click()
    page.wait_for_url("**/accounts/confirm-email/")
    shots(page, "verification-sent")

    page.goto(last_mail_link(outbox, CONFIRM_RE))
    assert GRACE in page.inner_text("main")
    shots(page, "confirm-email")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/status/")


def copy_journal_address(page) -> str:
    address = page.inner_text("#journal-recipient").strip()
    page.click("#copy-journal-recipient")
    page.wait_for_selector("#copy-journal-recipient:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == address
    return address


def verify_domain(page, shots, dns_server):
    nav(page, "Domains").click()
    page.fill("#id_name", "Northwind.Example")
    page.get_by_role("button", name="Add domain").click()
    value = page.inner_text("code[id$='-txt-value']")
    assert page.inner_text("code[id$='-txt-name']") == "_archiva.northwind.example"
    shots(page, "domains-record-to-create")
    dns_server.add_txt("_archiva.northwind.example", value)
    page.get_by_role("button", name="Check DNS now").click()
    assert "northwind.example is verified." in page.inner_text("main")
    shots(page, "domains-verified")


def invite(page, shots, outbox) -> str:
    nav(page, "Team").click()
    page.fill("#id_email", FRANK)
    page.select_option("#id_role", "user")
    page.get_by_role("button", name="Send invitation").click()
    assert f"Invitation sent to {FRANK}." in page.inner_text("main")
    assert FRANK in page.inner_text("#pending-invitations")
    shots(page, "team-invited")
    return last_mail_link(outbox, JOIN_RE)


def join(browser, live_server, shots, link):
    frank = new_page(browser, live_server)
    frank.goto(link)
    assert "Join Northwind Traders" in frank.inner_text("h1")
    shots(frank, "join")
    frank.get_by_role("link", name="Create your account").click()
    assert frank.input_value("#id_email") == FRANK
    assert frank.locator("#id_organization").count() == 0
    frank.fill("#id_password1", PASSWORD)
    frank.fill("#id_password2", PASSWORD)
    shots(frank, "join-sign-up")
    frank.get_by_role("button", name="Create account and join").click()
    frank.wait_for_url("**/search/")  # a plain user starts on search
    assert "Northwind Traders" in frank.inner_text(".page-header")
    assert nav(frank, "Team").count() == 0
    frank.goto("/status/")
    assert frank.locator("#journal-recipient").count() == 0  # the journal address is for admins only
    shots(frank, "user-status")
    return frank


def test_a_new_customer_sets_up_archiva_and_invites_a_colleague(
    page, browser, live_server, shots, outbox, ingest, tls_files, dns_server
):
    shots.prefix = "journey"
    sign_up(page, shots, outbox)
    shots(page, "status-new")
    address = copy_journal_address(page)
    assert re.fullmatch(r"journal-\d{6}[0-9A-Za-z]{57}@archive\.archiva\.com", address)
    assert page.inner_text("#check-journal").count("none yet") == 1

    verify_domain(page, shots, dns_server)

    # Exchange Online: the connector's validation mail, then journal reports to the copied address.
    validation = (
        b"From: postmaster@northwind.example\r\nTo: archive@archive.archiva.com\r\n"
        b"Subject: Connector validation\r\n\r\nTest.\r\n"
    )
    send_until_accepted(ingest, tls_files, ["archive@archive.archiva.com"], validation, "postmaster@northwind.example")
    quarterly = report("q1@northwind.example", "Quarterly numbers", [("To", GRACE)])
    onboarding = report("f1@northwind.example", "Frank onboarding plan", [("To", FRANK)])
    for data in (quarterly, onboarding):
        code, _ = send_until_accepted(ingest, tls_files, [address], data, "ndr@northwind.example")
        assert code == 250
    run_worker()

    nav(page, "System status").click()
    for check in ("#check-domain", "#check-validation", "#check-journal"):
        assert "check--ok" in page.get_attribute(check, "class"), check
    assert "northwind.example" in page.inner_text("#check-domain")
    shots(page, "status-setup-complete")

    page.click("#charts-link")
    page.wait_for_url("**/status/charts/")
    summary = page.inner_text("#chart-hourly-summary")
    assert summary == "3 received and 3 archived in the last 48 hours."
    assert page.locator("#chart-hourly rect.chart__bar--received").count() == 1
    assert page.locator("#chart-hourly rect.chart__bar--received").get_attribute("data-value") == "3"
    page.click("#chart-hourly summary")  # the numbers, for those who cannot read the bars
    assert page.locator("#chart-hourly-table td", has_text="3").count() >= 2
    shots(page, "charts")

    if search_exists():
        page.goto("/search/?q=subject:quarterly")
        assert "Quarterly numbers" in page.inner_text("#results")
        shots(page, "search")

    link = invite(page, shots, outbox)
    page.get_by_role("button", name="Sign out").click()

    frank = join(browser, live_server, shots, link)
    if search_exists():
        frank.goto("/search/")
        results = frank.inner_text("#results")
        assert "Frank onboarding plan" in results
        assert "Quarterly numbers" not in results
        shots(frank, "user-search")
    # Nothing the Content-Security-Policy refused, nothing broken in either browser.
    assert page.console_errors == [] and frank.console_errors == [], (page.console_errors, frank.console_errors)

    response = frank.goto("/team/")
    assert response.status == 403
    assert "Not allowed" in frank.inner_text("h1")
    shots(frank, "user-team-forbidden")


def test_pages_fit_a_phone_and_work_without_javascript(browser, live_server, shots, org):
    """Status, team and charts on a 390 px screen with JavaScript off: readable, no copy buttons."""
    shots.prefix = "phone"
    context = browser.new_context(viewport={"width": 390, "height": 844}, java_script_enabled=False)
    client_page = context.new_page()
    # Sign in through the form: the session cookie comes from the live server.
    client_page.goto(f"{live_server.url}/accounts/login/")
    client_page.fill("#id_login", "alice@contoso.com")
    client_page.fill("#id_password", PASSWORD)
    client_page.click("button[type=submit]")
    client_page.wait_for_url("**/status/")
    assert client_page.locator("#copy-journal-recipient").is_hidden()
    shots(client_page, "phone-status")
    width = client_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the status page scrolls sideways on a phone ({width}px)"
    for path, name in (("/team/", "phone-team"), ("/status/charts/", "phone-charts"), ("/domains/", "phone-domains")):
        client_page.goto(f"{live_server.url}{path}")
        assert client_page.evaluate("document.documentElement.scrollWidth") <= 390, path
        shots(client_page, name)
    # Disclosure widgets work without script: rotate the journal address.
    client_page.goto(f"{live_server.url}/status/")
    client_page.click("#rotate summary")
    client_page.click("#rotate-journal-address")
    assert "New journal address issued" in client_page.inner_text("main")
    context.close()


RESET_RE = re.compile(r"https?://[^/\s]+(/accounts/password/reset/key/\S+/)")
NEW_PASSWORD = "a different horse battery 77"


def test_sign_in_change_of_email_password_reset_and_sign_out(page, shots, outbox, org):
    """allauth's flows with our templates: an owner moves to a new address and resets the password."""
    from tenants.access import addresses_for
    from tenants.models import Membership

    shots.prefix = "account"
    page.on("dialog", lambda dialog: dialog.accept())  # allauth asks before removing an address
    page.goto("/accounts/login/")
    page.fill("#id_login", "alice@contoso.com")
    page.fill("#id_password", PASSWORD)
    shots(page, "sign-in")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/status/")

    # Change of email: add the new address, confirm it from the mail, make it primary, remove the old.
    nav(page, "Account").click()
    page.fill("#id_email", "alice@contoso.net")
    page.get_by_role("button", name="Add address").click()
    assert "alice@contoso.net" in page.inner_text("main")
    page.goto(last_mail_link(outbox, CONFIRM_RE))
    page.get_by_role("button", name="Confirm").click()
    page.goto("/accounts/email/")
    page.get_by_label(re.compile(r"alice@contoso\.net")).check()
    page.get_by_role("button", name="Make main address").click()
    page.get_by_label(re.compile(r"alice@contoso\.com")).check()
    page.get_by_role("button", name="Remove").click()
    page.wait_for_selector("text=Removed email address alice@contoso.com.")
    # One address left: shown plainly, with no Make main address or Remove to press.
    assert page.locator("input[name=email][type=radio]").count() == 0
    assert page.inner_text("#account-email") == "alice@contoso.net"
    assert page.get_by_role("button", name="Remove").count() == 0
    shots(page, "email-changed")
    assert addresses_for(Membership.objects.get(user=org.owner)) == ["alice@contoso.net"]

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/$"))

    # Password reset, by the new address.
    page.goto("/accounts/login/")
    page.get_by_role("link", name=re.compile("Forgot your password")).click()
    page.fill("#id_email", "alice@contoso.net")
    shots(page, "password-reset")
    page.get_by_role("button", name="Send the link").click()
    page.wait_for_url("**/password/reset/done/")
    shots(page, "password-reset-sent")
    page.goto(last_mail_link(outbox, RESET_RE))
    page.fill("#id_password1", NEW_PASSWORD)
    page.fill("#id_password2", NEW_PASSWORD)
    shots(page, "password-reset-new")
    page.get_by_role("button", name="Save new password").click()
    assert "Your new password is set." in page.inner_text("main")
    page.click("#reset-done-continue")  # the page leads on to sign-in
    page.wait_for_url("**/accounts/login/")

    page.goto("/accounts/login/")
    page.fill("#id_login", "alice@contoso.net")
    page.fill("#id_password", NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/status/")
    assert "Contoso" in page.inner_text(".page-header")
    assert page.console_errors == []
