"""Account flows an attacker could bend: links in mail follow SITE_ROOT, never
a forged Host header; password reset and sign-up answer alike for known and
unknown addresses; failing to log in on purpose locks out only the attacker's
address, not the account."""

from __future__ import annotations

import re

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.urls import reverse

from tenants.models import Tenant, User
from tests.conftest import PASSWORD

FORGED_HOST = "attacker.archiva.com"
LINK = re.compile(r"https?://[^\s/]+/[^\s]*")


@pytest.fixture
def forged_host_allowed(settings):
    """A Host the deployment accepts (ALLOWED_HOSTS is often wide behind a proxy) but that is not SITE_ROOT."""
    settings.ALLOWED_HOSTS = ["*"]


def links(message) -> list[str]:
    return LINK.findall(message.body)


def assert_links_on_site_root(message) -> None:
    found = links(message)
    assert found, message.body
    assert all(link.startswith(django_settings.SITE_ROOT + "/") for link in found), found
    assert FORGED_HOST not in message.body


# --- links in mail -----------------------------------------------------------------------------


def test_a_password_reset_with_a_forged_host_mails_a_link_to_site_root(client, org, mailoutbox, forged_host_allowed):
    client.post(reverse("account_reset_password"), {"email": org.user.email}, HTTP_HOST=FORGED_HOST)
    [message] = mailoutbox
    assert message.to == [org.user.email]
    assert_links_on_site_root(message)
    assert any("/accounts/password/reset/key/" in link for link in links(message))


def test_a_reset_for_an_unknown_address_with_a_forged_host_mails_links_to_site_root(
    client, db, mailoutbox, forged_host_allowed
):
    client.post(reverse("account_reset_password"), {"email": "nobody@contoso.com"}, HTTP_HOST=FORGED_HOST)
    [message] = mailoutbox
    assert_links_on_site_root(message)


def test_the_verification_mail_of_a_sign_up_with_a_forged_host_links_to_site_root(
    client, db, mailoutbox, forged_host_allowed
):
    data = {"email": "zoe@northwind.com", "password1": PASSWORD, "password2": PASSWORD, "organization": "Northwind"}
    client.post(reverse("account_signup"), data, HTTP_HOST=FORGED_HOST)
    [message] = mailoutbox
    assert_links_on_site_root(message)
    assert any("/accounts/confirm-email/" in link for link in links(message))


def test_an_invitation_sent_with_a_forged_host_links_to_site_root(client, org, mailoutbox, forged_host_allowed):
    client.force_login(org.admin)
    client.post(reverse("team"), {"email": "frank@contoso.com", "role": "user"}, HTTP_HOST=FORGED_HOST)
    [message] = mailoutbox
    assert_links_on_site_root(message)
    assert any("/team/join/" in link for link in links(message))


# --- no account enumeration --------------------------------------------------------------------


def test_password_reset_answers_alike_for_known_and_unknown_addresses(client, org, outsider, mailoutbox):
    answers = []
    for address in (org.user.email, outsider.email, "nobody@contoso.com"):
        response = client.post(reverse("account_reset_password"), {"email": address})
        answers.append((response.status_code, response.get("Location")))
    assert answers[0] == answers[1] == answers[2] == (302, reverse("account_reset_password_done"))
    # Each mailbox gets its mail; only the owner of the address reads what it says.
    assert [m.to for m in mailoutbox] == [[org.user.email], [outsider.email], ["nobody@contoso.com"]]


def test_signing_up_with_a_taken_address_answers_as_a_new_sign_up_and_mails_the_owner(client, org, mailoutbox):
    def sign_up(address):
        data = {"email": address, "password1": PASSWORD, "password2": PASSWORD, "organization": "Copycat"}
        response = client.post(reverse("account_signup"), data)
        client.logout()
        return response.status_code, response.get("Location")

    assert sign_up(org.owner.email) == sign_up("zoe@northwind.com")
    assert Tenant.objects.filter(name="Copycat").count() == 1  # zoe's only
    assert User.objects.filter(email=org.owner.email).count() == 1
    taken = [m for m in mailoutbox if m.to == [org.owner.email]]
    assert len(taken) == 1 and "already exists" in taken[0].body


# --- login rate limits -------------------------------------------------------------------------

ATTACKER_IP = "203.0.113.9"
OWN_IP = "198.51.100.7"


@pytest.fixture
def rate_limits(settings):
    """The production limits (tests run without any); the cache starts empty."""
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,5/5m/key"}
    cache.clear()
    yield
    cache.clear()


def log_in(client, email, password, ip) -> tuple[int, str]:
    client.logout()
    response = client.post(reverse("account_login"), {"login": email, "password": password}, REMOTE_ADDR=ip)
    return response.status_code, response.content.decode() if response.status_code == 200 else response["Location"]


def too_many(answer) -> bool:
    return answer[0] == 200 and "Too many failed login attempts" in answer[1]


def test_failing_on_purpose_limits_the_attackers_address_but_not_the_account(client, org, rate_limits):
    email = org.user.email
    for _ in range(5):
        assert not too_many(log_in(client, email, "wrong password", ATTACKER_IP))
    assert too_many(log_in(client, email, "wrong password", ATTACKER_IP))
    assert too_many(log_in(client, email, PASSWORD, ATTACKER_IP))  # from there, even the right password waits
    # Erin, from her own address, is not locked out.
    assert log_in(client, email, PASSWORD, OWN_IP) == (302, reverse("search"))


def test_one_address_trying_many_accounts_is_limited(client, org, outsider, rate_limits):
    accounts = [org.owner, org.admin, org.auditor, org.user, outsider]
    answers = [log_in(client, accounts[n % 5].email, "wrong password", ATTACKER_IP) for n in range(10)]
    assert not any(map(too_many, answers))
    assert too_many(log_in(client, outsider.email, "wrong password", ATTACKER_IP))
    assert log_in(client, outsider.email, PASSWORD, OWN_IP) == (302, reverse("status"))
