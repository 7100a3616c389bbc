"""The journal address is a credential: only owners and admins see it, its
rotation and the setup guide that repeats it.  Auditors and plain users get a
System Status without them (and `/api/v1/status` without
`journal_recipient`), and start on search after signing in.  Charlie, the
outsider, sees only his own tenant's address."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tenants.actions import rotate_journal_token
from tenants.api_tokens import create_api_token
from tenants.models import JournalToken, Membership
from tests.conftest import PASSWORD

ADMINS = ["owner", "admin"]
OTHERS = ["auditor", "user"]


def local_parts(tenant) -> list[str]:
    """Every journal token of the tenant, current and in grace, as it appears in an address."""
    return [f"journal-{t.token}" for t in JournalToken.objects.filter(tenant=tenant)]


def with_old_address(org) -> None:
    rotate_journal_token(org.tenant)


@pytest.mark.parametrize("role", ADMINS)
def test_owners_and_admins_see_the_address_the_guide_and_rotation(client, org, role):
    with_old_address(org)
    client.force_login(getattr(org, role))
    html = client.get(reverse("status")).content.decode()
    assert all(part in html for part in local_parts(org.tenant))
    assert 'id="journal-recipient"' in html and 'id="rotate-journal-address"' in html and 'id="setup"' in html


@pytest.mark.parametrize("role", OTHERS)
def test_auditors_and_users_see_a_status_page_without_the_journal_address(client, org, role):
    with_old_address(org)
    client.force_login(getattr(org, role))
    response = client.get(reverse("status"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="messages-archived"' in html
    assert not any(part in html for part in local_parts(org.tenant))
    assert 'id="journal-recipient"' not in html and 'id="rotate-journal-address"' not in html
    assert 'id="setup"' not in html and 'id="rule-recipient"' not in html


@pytest.mark.parametrize("role", ADMINS)
def test_the_status_api_gives_owners_and_admins_the_journal_recipient(client, org, role):
    client.force_login(getattr(org, role))
    data = client.get(reverse("api-status")).json()
    assert data["journal_recipient"].startswith(local_parts(org.tenant)[0] + "@")


@pytest.mark.parametrize("role", OTHERS)
def test_the_status_api_gives_auditors_and_users_no_journal_recipient(client, org, role):
    with_old_address(org)
    client.force_login(getattr(org, role))
    response = client.get(reverse("api-status"))
    assert response.status_code == 200
    data = response.json()
    assert "journal_recipient" not in data and "journal_recipients_in_grace" not in data
    assert "messages_archived" in data
    assert not any(part in response.content.decode() for part in local_parts(org.tenant))


@pytest.mark.parametrize("role", OTHERS)
def test_an_api_token_of_an_auditor_or_user_gets_no_journal_recipient(client, org, role):
    _, secret = create_api_token(Membership.objects.get(user=getattr(org, role)), "script")
    response = client.get(reverse("api-status"), HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    assert "journal_recipient" not in response.json()


def test_the_outsider_sees_only_his_own_journal_address(client, org, outsider):
    client.force_login(outsider)
    html = client.get(reverse("status")).content.decode()
    data = client.get(reverse("api-status")).json()
    fabrikam = outsider.memberships.get().tenant
    assert local_parts(fabrikam)[0] in html and data["journal_recipient"].startswith(local_parts(fabrikam)[0])
    assert not any(part in html or part in str(data) for part in local_parts(org.tenant))


@pytest.mark.parametrize(
    ("role", "landing"), [("owner", "status"), ("admin", "status"), *((r, "search") for r in OTHERS)]
)
def test_signing_in_lands_admins_on_status_and_everyone_else_on_search(client, org, role, landing):
    email = getattr(org, role).email
    response = client.post(reverse("account_login"), {"login": email, "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse(landing)
    assert client.get(reverse("home")).url == reverse(landing)


def test_the_outsider_lands_on_status_of_his_own_tenant(client, org, outsider):
    response = client.post(reverse("account_login"), {"login": outsider.email, "password": PASSWORD})
    assert response.url == reverse("status")
