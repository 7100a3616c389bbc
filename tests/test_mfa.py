"""Two-factor authentication for password accounts (allauth.mfa, signin.mfa):
enrolment, the code at login, recovery codes, the tenant's requirement and
its owner-only page, Microsoft sessions left alone, and the audit log."""

from __future__ import annotations

import re
import time

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.core.cache import cache

from signin.mfa import SIGNIN_METHOD_KEY, set_require_mfa
from tenants.models import AuditEvent
from tests.conftest import PASSWORD, membership_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_used_codes():
    cache.clear()  # allauth remembers used TOTP codes in the cache
    yield
    cache.clear()


def current_code(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def sign_in(client, email: str, password: str = PASSWORD):
    return client.post("/accounts/login/", {"login": email, "password": password})


def enrol(client) -> str:
    """Turn on TOTP for the signed-in user as a person does; the secret shown."""
    page = client.get("/accounts/2fa/totp/activate/")
    if page.status_code == 302 and page["Location"].startswith("/accounts/reauthenticate/"):
        # allauth asks for the password again before a security change
        assert client.post(page["Location"], {"password": PASSWORD}).status_code == 302
        page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.content.decode()).group(1)
    answer = client.post("/accounts/2fa/totp/activate/", {"code": current_code(secret)})
    assert answer.status_code == 302, answer.content.decode()[:2000]
    return secret


def recovery_codes(client) -> list[str]:
    page = client.get("/accounts/2fa/recovery-codes/")
    assert page.status_code == 200, page
    page = page.content.decode()
    block = re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S).group(1)
    return block.split()


def test_a_password_user_enrols_and_then_needs_the_code_to_sign_in(client, org):
    sign_in(client, org.user.email)
    secret = enrol(client)
    assert Authenticator.objects.filter(user=org.user, type=Authenticator.Type.TOTP).exists()
    client.logout()

    answer = sign_in(client, org.user.email)
    assert answer.status_code == 302 and answer["Location"].startswith("/accounts/2fa/authenticate/")
    assert client.get("/search/").status_code == 302  # not signed in until the code is given

    wrong = client.post(
        "/accounts/2fa/authenticate/", {"code": "000000" if current_code(secret) != "000000" else "111111"}
    )
    assert wrong.status_code == 200 and b"Incorrect code" in wrong.content
    right = client.post("/accounts/2fa/authenticate/", {"code": current_code(secret)})
    assert right.status_code == 302 and right["Location"] == "/search/"
    assert client.get("/search/").status_code == 200


def test_the_secret_is_stored_encrypted(client, org):
    sign_in(client, org.user.email)
    secret = enrol(client)
    stored = Authenticator.objects.get(user=org.user, type=Authenticator.Type.TOTP).data["secret"]
    assert secret not in stored and stored.startswith("gAAAA")  # a Fernet token


def test_a_recovery_code_signs_in_once(client, org):
    sign_in(client, org.user.email)
    enrol(client)
    codes = recovery_codes(client)
    assert len(codes) == 10
    client.logout()

    sign_in(client, org.user.email)
    assert client.post("/accounts/2fa/authenticate/", {"code": codes[0]}).status_code == 302
    assert client.get("/search/").status_code == 200
    client.logout()

    sign_in(client, org.user.email)
    again = client.post("/accounts/2fa/authenticate/", {"code": codes[0]})
    assert again.status_code == 200 and b"Incorrect code" in again.content
    assert client.post("/accounts/2fa/authenticate/", {"code": codes[1]}).status_code == 302


def test_members_without_a_second_factor_are_sent_to_enrolment_when_the_tenant_requires_it(client, org):
    set_require_mfa(membership_of(org.owner), True)
    sign_in(client, org.user.email)
    for path in ("/search/", "/status/", "/accounts/email/"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer["Location"] == "/accounts/2fa/totp/activate/", path
    api = client.get("/api/v1/messages?q=x")
    assert api.status_code == 403 and "two-factor" in api.json()["error"]
    assert client.get("/accounts/2fa/").status_code == 200
    enrol(client)
    assert client.get("/search/").status_code == 200


def test_other_tenants_and_tenants_without_the_requirement_are_not_redirected(client, org, outsider):
    set_require_mfa(membership_of(org.owner), True)
    sign_in(client, outsider.email)
    assert client.get("/status/").status_code == 200


def test_a_microsoft_session_is_never_sent_to_enrolment(client, org):
    set_require_mfa(membership_of(org.owner), True)
    sign_in(client, org.user.email)
    session = client.session
    session[SIGNIN_METHOD_KEY] = "microsoft"
    session.save()
    assert client.get("/search/").status_code == 200


def test_an_account_without_a_password_is_not_sent_to_enrolment(client, org):
    set_require_mfa(membership_of(org.owner), True)
    org.user.set_unusable_password()
    org.user.save(update_fields=["password"])
    client.force_login(org.user)
    assert client.get("/search/").status_code == 200


def test_the_last_second_factor_cannot_be_removed_while_the_tenant_requires_one(client, org):
    sign_in(client, org.user.email)
    enrol(client)
    set_require_mfa(membership_of(org.owner), True)
    page = client.get("/accounts/2fa/totp/deactivate/")
    refused = client.post("/accounts/2fa/totp/deactivate/")
    assert page.status_code == 200 and refused.status_code == 200
    assert b"Your organization requires two-factor authentication" in refused.content
    assert Authenticator.objects.filter(user=org.user, type=Authenticator.Type.TOTP).exists()


def test_only_the_owner_opens_and_changes_the_policy_page(client, org, outsider):
    for someone in (org.admin, org.auditor, org.user):
        client.force_login(someone)
        assert client.get("/settings/mfa/").status_code == 403
        assert client.post("/settings/mfa/", {"require_mfa": "on"}).status_code == 403
    client.force_login(outsider)
    client.post("/settings/mfa/", {"require_mfa": "on"})
    org.tenant.refresh_from_db()
    assert org.tenant.require_mfa is False


def test_the_owner_enrols_first_then_requires_mfa_and_it_is_audited(client, org, django_capture_on_commit_callbacks):
    sign_in(client, org.owner.email)
    refused = client.post("/settings/mfa/", {"require_mfa": "on"}, follow=True)
    assert b"own account first" in refused.content
    org.tenant.refresh_from_db()
    assert org.tenant.require_mfa is False

    with django_capture_on_commit_callbacks(execute=True):  # allauth signals after the commit
        enrol(client)
    page = client.get("/settings/mfa/")
    assert page.status_code == 200 and b"erin@contoso.com" in page.content and b"not set up" in page.content
    client.post("/settings/mfa/", {"require_mfa": "on"})
    org.tenant.refresh_from_db()
    assert org.tenant.require_mfa is True
    client.post("/settings/mfa/", {})
    org.tenant.refresh_from_db()
    assert org.tenant.require_mfa is False

    events = AuditEvent.objects.filter(tenant=org.tenant).order_by("id")
    changes = [e.detail for e in events if e.action == AuditEvent.Action.SETTING_CHANGED and e.target == "require_mfa"]
    assert changes == [{"old": False, "new": True}, {"old": True, "new": False}]
    added = events.filter(action=AuditEvent.Action.MFA_ADDED, target=org.owner.email)
    assert {e.detail["type"] for e in added} == {"totp", "recovery_codes"}


def test_every_two_factor_page_renders_in_the_sites_layout(client, org):
    sign_in(client, org.user.email)
    enrol(client)
    for path in (
        "/accounts/2fa/",
        "/accounts/2fa/totp/deactivate/",
        "/accounts/2fa/recovery-codes/",
        "/accounts/2fa/recovery-codes/generate/",
        "/accounts/2fa/webauthn/",
        "/accounts/2fa/webauthn/add/",
    ):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert 'aria-label="Account"' in answer.content.decode(), path  # the account pages' sub-navigation


def test_turning_the_app_off_is_audited_and_sign_in_asks_no_code_again(client, org, django_capture_on_commit_callbacks):
    sign_in(client, org.user.email)
    enrol(client)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/accounts/2fa/totp/deactivate/").status_code == 302
    assert not Authenticator.objects.filter(user=org.user, type=Authenticator.Type.TOTP).exists()
    removed = AuditEvent.objects.filter(tenant=org.tenant, action=AuditEvent.Action.MFA_REMOVED)
    # The recovery codes go with the last factor.
    assert sorted(e.detail["type"] for e in removed) == ["recovery_codes", "totp"]
    client.logout()
    answer = sign_in(client, org.user.email)
    assert answer["Location"] == "/search/"


def test_new_recovery_codes_replace_the_old_ones(client, org):
    sign_in(client, org.user.email)
    enrol(client)
    old = recovery_codes(client)
    page = client.get("/accounts/2fa/recovery-codes/generate/")
    assert b"The 10 codes you have now stop working" in page.content
    assert client.post("/accounts/2fa/recovery-codes/generate/").status_code == 302
    new = recovery_codes(client)
    assert len(new) == 10 and not set(old) & set(new)
