"""allauth's account pages in the site's words (issue 23, point 7) and the
sign-up's region (point 8)."""

from __future__ import annotations

import email
from email import policy

import pytest
from django.urls import reverse

from regions.current import current_region
from tenants.actions import create_user
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def outbox(settings, tmp_path):
    settings.EMAIL_BACKEND = "web.mail.OutboxBackend"
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"
    return settings.ARCHIVA_OUTBOX_DIR


def mails(outbox) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(outbox.glob("*.eml"))]


def test_one_address_has_no_make_primary_or_remove(client, org):
    client.force_login(org.user)
    html = client.get(reverse("account_email")).content.decode()
    assert 'id="account-email">erin@contoso.com<' in html
    assert "Make main address" not in html and "action_remove" not in html and "Make Primary" not in html
    assert "Add an address" in html


def test_confirmation_link_can_be_sent_again_from_the_waiting_page(client, outbox):
    create_user("new@contoso.com", PASSWORD, verified=False)
    page = client.get(reverse("account_email_verification_sent")).content.decode()
    assert 'id="resend-confirmation"' in page
    answer = client.post(reverse("resend-confirmation"), {"email": "New@contoso.com"}, follow=True)
    assert b"a new link is on its way" in answer.content
    [mail] = mails(outbox)
    assert mail["To"] == "new@contoso.com" and "/accounts/confirm-email/" in mail.get_body().get_content()


def test_resend_answers_alike_for_unknown_and_confirmed_addresses_and_sends_nothing(client, org, outbox):
    for address in ("nobody@contoso.com", org.user.email):
        answer = client.post(reverse("resend-confirmation"), {"email": address}, follow=True)
        assert f"If {address} is waiting to be confirmed".encode() in answer.content
    assert mails(outbox) == []


def test_resend_with_a_malformed_address_says_what_to_type(client, outbox):
    answer = client.post(reverse("resend-confirmation"), {"email": "not an address"}, follow=True)
    assert b"e.g. anna@contoso.com" in answer.content
    assert mails(outbox) == []


def test_an_expired_confirmation_link_offers_a_new_one(client):
    html = client.get("/accounts/confirm-email/not-a-key/").content.decode()
    assert "expired or is not valid" in html and 'id="resend-confirmation"' in html


def test_password_reset_done_pages_lead_on(client, org):
    done = client.get(reverse("account_reset_password_done")).content.decode()
    assert reverse("account_login") in done and "Check your email" in done
    changed = client.get(reverse("account_reset_password_from_key_done")).content.decode()
    assert 'id="reset-done-continue"' in changed and reverse("account_login") in changed


def test_account_pages_use_the_sites_wording(client, org):
    client.force_login(org.user)
    assert b"Change password" in client.get(reverse("account_change_password")).content
    assert b"Reset your password" in client.get(reverse("account_reset_password")).content
    subnav = client.get(reverse("account_email")).content.decode()
    assert "Two-factor authentication" in subnav and "Two-factor policy" not in subnav
    client.force_login(org.owner)
    assert "Two-factor policy" in client.get(reverse("account_email")).content.decode()


@pytest.mark.parametrize(
    ("region", "here", "there", "other_signup"),
    [
        ("us", "United States", "European Union", "https://mailarchiva.eu/accounts/signup/"),
        ("eu", "European Union", "United States", "https://archiva.com/accounts/signup/"),
    ],
)
def test_sign_up_says_where_the_data_lives_and_links_to_the_other_region(
    client, settings, region, here, there, other_signup
):
    settings.ARCHIVA_REGION = region
    settings.ARCHIVA_SITE_DOMAIN = None
    current_region.cache_clear()
    try:
        html = client.get(reverse("account_signup")).content.decode()
    finally:
        current_region.cache_clear()
    assert f"<strong>{here}</strong> region" in html
    assert f'href="{other_signup}"' in html and f"Need your data in the {there}?" in html
