"""Sign-up: a person creates an account and their organization's archive at once."""

from __future__ import annotations

import email
import re
from email import policy

import pytest
from django.conf import settings
from django.urls import reverse

from infra.storage import StorageError, get_store
from tenants.models import JournalToken, Membership, Role, Tenant, User
from tests.conftest import PASSWORD

JOURNAL_ADDRESS_RE = re.compile(r"journal-\d{6}[0-9A-Za-z]{57}@archive\.archiva\.com")
# Links in mail are on SITE_ROOT, whatever Host the request named.
LINK_RE = re.compile(re.escape(settings.SITE_ROOT) + r"(/accounts/confirm-email/[^/\s]+/)")


@pytest.fixture
def outbox(settings, tmp_path):
    """Outgoing mail goes to .eml files in a folder of this test."""
    settings.EMAIL_BACKEND = "web.mail.OutboxBackend"
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"
    return settings.ARCHIVA_OUTBOX_DIR


def sign_up(client, email_address="grace@northwind.example", password=PASSWORD, organization="Northwind Traders"):
    return client.post(
        reverse("account_signup"),
        {"email": email_address, "password1": password, "password2": password, "organization": organization},
    )


def verification_link(outbox) -> str:
    (eml,) = sorted(outbox.glob("*.eml"))
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    body = message.get_body(preferencelist=("plain",)).get_content()
    return LINK_RE.search(body).group(1)


def status_text(client) -> str:
    response = client.get(reverse("status"))
    assert response.status_code == 200
    return response.content.decode()


def journal_recipient(html: str) -> str:
    # The address is marked up to break only at its @ (a <wbr>): its text is the address.
    return re.sub(r"<[^>]+>", "", re.search(r'id="journal-recipient"[^>]*>(.*?)</code>', html).group(1))


@pytest.mark.django_db(transaction=True)
def test_sign_up_then_verification_link_opens_status_with_journal_address(client, outbox):
    """A person signs up, follows the link from the .eml in the outbox, and sees their journal address."""
    response = sign_up(client)
    assert response.status_code == 302
    assert response.url == reverse("account_email_verification_sent")

    link = verification_link(outbox)
    page = client.get(link)
    assert page.status_code == 200
    assert "grace@northwind.example" in page.content.decode()
    response = client.post(link)
    assert response.status_code == 302
    assert response.url == reverse("status")

    html = status_text(client)
    address = journal_recipient(html)
    assert JOURNAL_ADDRESS_RE.fullmatch(address)
    assert address.split("@")[0] in html  # the local part is shown on its own too

    user = User.objects.get(email="grace@northwind.example")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    tenant = membership.tenant
    assert tenant.name == "Northwind Traders"
    assert tenant.region == "us"
    token = JournalToken.objects.get(tenant=tenant, expires_at__isnull=True)
    assert address == f"journal-{token.token}@archive.archiva.com"
    assert (get_store().root / tenant.bucket).is_dir()


@pytest.mark.django_db
def test_unverified_user_cannot_reach_status(client, outbox):
    """Until the link is followed, neither the sign-up session nor a password login opens /status/."""
    sign_up(client)
    response = client.get(reverse("status"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))

    response = client.post(reverse("account_login"), {"login": "grace@northwind.example", "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("account_email_verification_sent")
    assert client.get(reverse("status")).status_code == 302
    assert client.get(reverse("api-status")).status_code == 401


@pytest.mark.django_db
def test_sign_up_page_names_the_region_of_this_site(client):
    html = client.get(reverse("account_signup")).content.decode()
    assert "United States" in html
    assert "archive.archiva.com" in html
    for label in ("Organization name", "Email", "Password", "Password (again)"):
        assert f">{label}" in html


@pytest.mark.django_db
def test_a_taken_email_is_not_revealed_and_its_owner_gets_a_mail(client, org, outbox):
    """Sign-up answers as for a new address (no enumeration); alice is told someone tried."""
    response = sign_up(client, email_address="alice@contoso.com")
    assert response.status_code == 302
    assert response.url == reverse("account_email_verification_sent")
    assert Tenant.objects.count() == 1
    [mail] = [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")]
    assert mail["To"] == "alice@contoso.com"
    assert "already exists" in mail.get_body(preferencelist=("plain",)).get_content()


@pytest.mark.django_db
def test_weak_password_gets_the_form_back_with_the_reason(client, outbox):
    response = sign_up(client, password="12345678")
    assert response.status_code == 200
    html = response.content.decode()
    assert "This password is too short" in html
    assert "This password is entirely numeric." in html
    assert not User.objects.exists()
    assert not Tenant.objects.exists()


@pytest.mark.django_db
def test_an_invalid_verification_link_says_so(client):
    response = client.get(reverse("account_confirm_email", args=["not-a-key"]))
    assert response.status_code == 200
    assert "This link has expired or is not valid." in response.content.decode()


@pytest.mark.django_db
def test_organization_name_is_required(client, outbox):
    response = sign_up(client, organization="   ")
    assert response.status_code == 200
    assert 'id="id_organization_error"' in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_storage_failure_leaves_neither_user_nor_tenant(client, outbox, monkeypatch):
    """The user, the tenant and its bucket are created together or not at all."""

    def refuse(self, bucket):
        raise StorageError("disk full")

    monkeypatch.setattr(type(get_store()), "create_bucket", refuse)
    response = sign_up(client)
    assert response.status_code == 503
    assert "nothing was saved" in response.content.decode()
    assert not User.objects.exists()
    assert not Tenant.objects.exists()
    assert not list(outbox.glob("*.eml"))
