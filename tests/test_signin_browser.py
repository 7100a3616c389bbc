"""Sign-in with Microsoft in a real browser, as a new admin and an employee try it.

The admin turns "Sign in with Microsoft" on at /settings/login/, sees the
redirect URI to paste into Azure, adds a role rule after a Lookup; an
employee then types their address on the login page, passes Microsoft's
sign-in page (the fake) with no password at Archiva, and lands on search
with the rule's role.  A token of another directory and an address outside
the verified domains are refused.  Screenshots: test-artifacts/screenshots/signin-*.png.
"""

from __future__ import annotations

import pytest

from m365.connection import check_connection
from signin.entra import callback_url
from tenants.models import AuditEvent, Role, User
from tests.browser_support import TIMEOUT_MS
from tests.conftest import PASSWORD, membership_of
from tests.ms_support import connect

pytestmark = pytest.mark.django_db(transaction=True)
OTHER_DIRECTORY = "5b1f7f3e-0000-4000-8000-00000000beef"


def employee_browser(browser, live_server):
    """A person's own browser; it trusts the fake's test CA as a real one trusts Microsoft's."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=live_server.url, ignore_https_errors=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def through_microsoft(page, address: str, account: str | None = None) -> None:
    """Our login page with the address only, then Microsoft's page with `account` picked."""
    page.goto("/accounts/login/")
    page.fill("#id_login", address)
    page.click("#login-submit")
    page.wait_for_selector("#account")
    assert page.input_value("#account") == address  # login_hint
    if account:
        page.fill("#account", account)
    page.click("#idSIButton9")


def test_an_employee_signs_in_with_microsoft_and_gets_the_rules_role(
    browser, page, live_server, shots, org, ms_fake, settings
):
    shots.prefix = "signin"
    settings.SITE_ROOT = live_server.url
    connection = connect(ms_fake, org.tenant, domains=[("contoso.com", True)])
    assert check_connection(connection).ok
    directory = str(connection.directory_id)
    ms_fake.add_redirect_uri(str(connection.client_id), callback_url())
    kim = ms_fake.add_user(directory, "kim@contoso.com", "Kim Lee", aliases=["k.lee@contoso.com"], department="Legal")
    ms_fake.add_group(directory, "Archive Auditors", [kim])
    ms_fake.add_user(directory, "lee@contoso.onmicrosoft.com", "Lee")
    ms_fake.add_tenant(OTHER_DIRECTORY, "Fabrikam", domains=[("fabrikam.com", True)])
    ms_fake.add_user(OTHER_DIRECTORY, "eve@contoso.com", "Eve")

    # The admin (an owner, with a password) turns it on.
    page.goto("/accounts/login/")
    page.fill("#id_login", "alice@contoso.com")
    page.fill("#id_password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url("**/status/")
    page.click("nav >> text=Sign-in")
    page.wait_for_url("**/settings/login/")
    assert page.inner_text("#callback-url") == f"{live_server.url}/accounts/microsoft/callback"
    page.check("#id_enabled")
    page.click("#save-signin")
    assert "Sign-in settings saved." in page.inner_text("main")
    assert page.is_checked("#id_enabled") and "on" in page.inner_text("#signin-state")
    page.fill("#id_email", "kim@contoso.com")
    page.click("#lookup-button")
    assert "Archive Auditors" in page.inner_text("#lookup-groups")
    assert page.inner_text("#lookup-department") == "Legal"
    page.select_option("#id_attribute", "memberOf")
    page.fill("#id_value", "Archive Auditors")
    page.select_option("#id_role", "auditor")
    page.click("#add-rule")
    assert "memberOf = “Archive Auditors” → Auditor" in page.inner_text("#rule-list")
    shots(page, "settings")

    # The employee: no password at Archiva.
    kim_page = employee_browser(browser, live_server)
    through_microsoft(kim_page, "kim@contoso.com")
    kim_page.wait_for_url("**/search/")
    assert "Audit log" in kim_page.inner_text("nav")  # an auditor's navigation
    shots(kim_page, "employee-search")
    user = User.objects.get(email="kim@contoso.com")
    assert membership_of(user).role == Role.AUDITOR
    assert not user.has_usable_password()

    # Someone of another directory (a token with another tid) is refused.
    ms_fake.cross_tenant_tokens = True
    eve_page = employee_browser(browser, live_server)
    through_microsoft(eve_page, "kim@contoso.com", account="eve@contoso.com")
    eve_page.wait_for_selector("#signin-refused")
    assert "another Microsoft directory" in eve_page.inner_text("#signin-refused")
    shots(eve_page, "other-directory")
    ms_fake.cross_tenant_tokens = False

    # An address outside the verified domains is refused.
    lee_page = employee_browser(browser, live_server)
    through_microsoft(lee_page, "kim@contoso.com", account="lee@contoso.onmicrosoft.com")
    lee_page.wait_for_selector("#signin-refused")
    assert "not in one of your organization" in lee_page.inner_text("#signin-refused")
    shots(lee_page, "unverified-domain")

    reasons = [e.detail["reason"] for e in AuditEvent.objects.filter(tenant=org.tenant, action="signin-refused")]
    assert sorted(reasons) == ["domain_not_verified", "other_directory"]
    assert not User.objects.filter(email__in=["eve@contoso.com", "lee@contoso.onmicrosoft.com"]).exists()
