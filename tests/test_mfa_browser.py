"""Two-factor authentication and the account pages in Chromium, at 1280 and
390 px: a password user enrols an authenticator app (the test computes the
codes from the key the page shows, as the app would) and needs a code at the
next sign-in; a recovery code on a phone; an owner requires two-factor and an
admin is sent to enrolment; the account pages and the sign-up's region."""

from __future__ import annotations

import re
import time

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.core.cache import cache

from tests.browser_support import new_page
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = {"width": 390, "height": 844}


@pytest.fixture(autouse=True)
def _fresh_used_codes():
    cache.clear()  # allauth remembers used TOTP codes in the (per-process) cache
    yield
    cache.clear()


def code_for(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def phone_page(browser, live_server):
    page = new_page(browser, live_server)
    page.set_viewport_size(PHONE)
    return page


def sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_login", email)
    if not page.locator("#id_password").is_visible():  # a login page that asks for the email first
        page.locator("button[type=submit]").first.click()
        page.wait_for_selector("#id_password")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def fits(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url} scrolls sideways ({width}px)"


def enrol(page, shots=None) -> tuple[str, list[str]]:
    """From the account page: set up the app; the key shown and the recovery codes."""
    page.goto("/accounts/email/")
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Two-factor authentication").click()
    page.wait_for_url("**/accounts/2fa/")
    if shots:
        shots(page, "mfa-off")
    page.get_by_role("link", name="Set up an authenticator app").click()
    if "/reauthenticate/" in page.url:
        page.fill("#id_password", PASSWORD)
        if shots:
            shots(page, "confirm-password")
        page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/2fa/totp/activate/")
    assert page.locator("#totp-qr").is_visible()
    secret = page.inner_text("#totp-secret").strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    page.fill("#id_code", code_for(secret))
    if shots:
        shots(page, "activate")
    page.get_by_role("button", name="Turn on").click()
    page.wait_for_load_state()
    page.goto("/accounts/2fa/recovery-codes/")
    codes = page.input_value("#recovery_codes").split()
    assert len(codes) == 10
    return secret, codes


def test_a_password_user_enrols_totp_and_needs_a_code_at_the_next_sign_in(browser, live_server, page, shots, org):
    sign_in(page, org.user.email)
    page.wait_for_url("**/search/")
    secret, codes = enrol(page, shots)
    assert Authenticator.objects.filter(user=org.user, type=Authenticator.Type.TOTP).exists()
    page.goto("/accounts/2fa/")
    assert "Sign-in asks for a code" in page.inner_text("#mfa-totp")
    assert "10 of 10 codes left" in page.inner_text("#mfa-recovery")
    shots(page, "mfa-on")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()
    sign_in(page, org.user.email)
    page.wait_for_url("**/2fa/authenticate/")
    shots(page, "code-asked")
    page.fill("#id_code", "000000" if code_for(secret) != "000000" else "111111")
    page.get_by_role("button", name="Sign in").click()
    assert "Incorrect code" in page.inner_text("main")
    page.fill("#id_code", code_for(secret))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/search/")

    # On a phone, without the app: a recovery code, once.
    phone = phone_page(browser, live_server)
    sign_in(phone, org.user.email)
    phone.wait_for_url("**/2fa/authenticate/")
    fits(phone)
    shots(phone, "phone-code-asked")
    phone.fill("#id_code", codes[0])
    phone.get_by_role("button", name="Sign in").click()
    phone.wait_for_url("**/search/")
    phone.goto("/accounts/2fa/")
    fits(phone)
    shots(phone, "phone-mfa-on")
    assert "9 of 10 codes left" in phone.inner_text("#mfa-recovery")
    assert page.console_errors == [] and phone.console_errors == []
    phone.context.close()


def test_an_owner_requires_two_factor_and_an_admin_is_sent_to_enrolment(browser, live_server, page, shots, org):
    sign_in(page, org.owner.email)
    page.goto("/settings/mfa/")
    page.check("#id_require_mfa")
    page.get_by_role("button", name="Save").click()
    assert "own account first" in page.inner_text("main")
    enrol(page)
    page.goto("/accounts/email/")
    page.get_by_role("link", name="Two-factor policy").click()
    page.check("#id_require_mfa")
    page.get_by_role("button", name="Save").click()
    assert "now required" in page.inner_text("main")
    assert "not set up" in page.inner_text("#mfa-members")
    shots(page, "policy")

    phone = phone_page(browser, live_server)
    sign_in(phone, org.admin.email)
    phone.goto("/search/")
    # Sent to enrolment, which (as every change of how one signs in) asks for the password again.
    phone.wait_for_url(re.compile(r"/accounts/(2fa/totp/activate|reauthenticate)/"))
    assert "requires two-factor authentication" in phone.inner_text("main")
    fits(phone)
    shots(phone, "phone-enrol-required")
    if "/reauthenticate/" in phone.url:
        phone.fill("#id_password", PASSWORD)
        phone.get_by_role("button", name="Confirm").click()
    phone.wait_for_url("**/2fa/totp/activate/")
    fits(phone)
    shots(phone, "phone-activate")
    secret = phone.inner_text("#totp-secret").strip()
    phone.fill("#id_code", code_for(secret))
    phone.get_by_role("button", name="Turn on").click()
    phone.wait_for_load_state()
    phone.goto("/search/")
    phone.wait_for_url("**/search/")
    phone.context.close()
    page.goto("/settings/mfa/")
    assert page.inner_text("#mfa-members").count("not set up") == 2  # dave and erin


@pytest.mark.parametrize("width", [1280, 390])
def test_account_pages_and_the_sign_up_region_at_both_widths(page, shots, org, width):
    shots.prefix = f"account-pages-{width}"
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/accounts/signup/")
    region = page.inner_text("#signup-region")
    assert "United States" in region and "Need your data in the European Union?" in region
    link = page.get_by_role("link", name="Sign up on mailarchiva.eu")
    assert link.get_attribute("href") == "https://mailarchiva.eu/accounts/signup/"
    fits(page)
    shots(page, "signup")
    for path, name, heading in (
        ("/accounts/password/reset/", "password-reset", "Reset your password"),
        ("/accounts/password/reset/done/", "password-reset-done", "Check your email"),
        ("/accounts/confirm-email/", "verification-sent", "Confirm your email address"),
        ("/accounts/confirm-email/expired-key/", "confirm-expired", "Confirm your email address"),
    ):
        page.goto(path)
        assert page.get_by_role("heading", level=1).inner_text() == heading, path
        fits(page)
        shots(page, name)
    assert page.locator("#resend-confirmation").is_visible()
    sign_in(page, org.user.email)
    for path, name, heading in (
        ("/accounts/email/", "email", "Email addresses"),
        ("/accounts/password/change/", "password-change", "Change password"),
        ("/accounts/2fa/", "two-factor", "Two-factor authentication"),
    ):
        page.goto(path)
        assert page.get_by_role("heading", level=1).inner_text() == heading, path
        fits(page)
        shots(page, name)
    page.goto("/accounts/email/")
    assert page.get_by_role("button", name="Remove").count() == 0
    assert page.get_by_role("button", name=re.compile("Make")).count() == 0


def test_a_security_key_is_added_and_signs_in_instead_of_a_code(page, shots, org):
    """WebAuthn through Chromium's virtual authenticator (DevTools protocol), as a key would answer."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("WebAuthn.enable")
    options = {"protocol": "ctap2", "transport": "usb", "hasResidentKey": True, "hasUserVerification": True}
    devtools.send("WebAuthn.addVirtualAuthenticator", {"options": {**options, "isUserVerified": True}})
    sign_in(page, org.user.email)
    page.goto("/accounts/2fa/")
    page.get_by_role("link", name="Add a security key").click()
    if "/reauthenticate/" in page.url:
        page.fill("#id_password", PASSWORD)
        page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/2fa/webauthn/add/")
    page.fill("#id_name", "Desk key")
    shots(page, "add-key")
    page.get_by_role("button", name="Add key").click()
    # Where adding leads (not the add page itself, whose URL also starts with /accounts/2fa/webauthn/).
    added = re.compile(r"/accounts/2fa/(recovery-codes|webauthn)/")
    page.wait_for_url(lambda url: "/add/" not in url and bool(added.search(url)))
    assert Authenticator.objects.filter(user=org.user, type=Authenticator.Type.WEBAUTHN).count() == 1
    page.goto("/accounts/2fa/webauthn/")
    assert "Desk key" in page.inner_text("#webauthn-keys")
    shots(page, "keys")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()
    sign_in(page, org.user.email)
    page.wait_for_url("**/2fa/authenticate/")
    shots(page, "key-asked")
    page.get_by_role("button", name="Use a security key").click()
    page.wait_for_url("**/search/")
    assert page.console_errors == []
