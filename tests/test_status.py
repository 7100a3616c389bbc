"""System Status (`/status/`) and its JSON twin (`/api/v1/status`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.templatetags.static import static
from django.urls import reverse

from ingest.models import Delivery
from tenants.actions import rotate_journal_token
from tenants.models import JournalToken
from tests import archive_support
from tests.archive_support import padded_report, process
from tests.conftest import make_user


def address_of(tenant) -> str:
    token = JournalToken.objects.get(tenant=tenant, expires_at__isnull=True)
    return f"journal-{token.token}@archive.archiva.com"


def journal_recipient(html: str) -> str:
    # The address is marked up to break only at its @ (a <wbr>): its text is the address.
    return re.sub(r"<[^>]+>", "", re.search(r'id="journal-recipient"[^>]*>(.*?)</code>', html).group(1))


def deliver(tenant, queue_id, size, status=Delivery.Status.ARCHIVED, received_at=None):
    """A report of `size` bytes received (at `received_at`, time-shifted) and taken as far as `status`."""
    delivery = archive_support.deliver(tenant, padded_report(f"{queue_id}@contoso.com", size))
    archive_support.received_at(delivery, received_at or datetime.now(UTC))
    if status == Delivery.Status.ARCHIVED:
        process(delivery.pk)
    elif status == Delivery.Status.FAILED:
        archive_support.fail_verification(delivery)
    return delivery


@pytest.fixture
def contoso_mail(org, outsider):
    """Contoso: two archived, one awaiting verification, one failed; Fabrikam: one."""
    last = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
    deliver(org.tenant, "a1", 1_000_000, received_at=last - timedelta(days=2))
    deliver(org.tenant, "a2", 200_000, received_at=last - timedelta(days=1))
    deliver(org.tenant, "a3", 48_576, status=Delivery.Status.STORED, received_at=last)
    deliver(org.tenant, "a4", 1_024, status=Delivery.Status.FAILED, received_at=last - timedelta(hours=1))
    fabrikam = outsider.memberships.get().tenant
    deliver(fabrikam, "f1", 2_999_999, received_at=last + timedelta(days=30))
    return last


# --- the page -------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_see_the_journal_address_on_status(client, org, role):
    client.force_login(getattr(org, role))
    response = client.get(reverse("status"))
    assert response.status_code == 200
    html = response.content.decode()
    assert journal_recipient(html) == address_of(org.tenant)
    assert address_of(org.tenant).split("@")[0] in html


def test_status_requires_login(client, org):
    response = client.get(reverse("status"))
    assert response.status_code == 302
    assert response.url == f"{reverse('account_login')}?next=/status/"


def test_outsider_sees_his_own_archive_and_nothing_of_contoso(client, org, outsider, contoso_mail):
    client.force_login(outsider)
    html = client.get(reverse("status")).content.decode()
    fabrikam = outsider.memberships.get().tenant
    assert journal_recipient(html) == address_of(fabrikam)
    assert address_of(org.tenant).split("@")[0][:20] not in html
    assert "Contoso" not in html
    assert re.search(r'id="messages-archived">1<', html)


def test_a_user_of_no_tenant_gets_404(client, db):
    client.force_login(make_user("mallory@example.net"))
    assert client.get(reverse("status")).status_code == 404
    response = client.get(reverse("api-status"))
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


def test_status_shows_the_exchange_setup_with_this_tenants_values(client, org):
    client.force_login(org.owner)
    html = client.get(reverse("status")).content.decode()
    # The recipient and the journal rule's target, each breaking only at its @ (a <wbr>).
    local, domain = address_of(org.tenant).split("@")
    assert html.count(f'<span class="nowrap">{local}</span><wbr>@<span class="nowrap">{domain}</span>') == 2
    assert 'id="smart-host">archive.archiva.com<' in html
    assert 'id="validation-address">archive@archive.archiva.com<' in html
    for words in (
        "All messages",
        "Everyone",
        "Partner organization",
        "Transport Layer Security",
        "trusted certificate",
    ):
        assert words in html


def test_status_counts_this_tenants_messages_and_deliveries_for_humans(client, org, contoso_mail):
    client.force_login(org.auditor)
    html = client.get(reverse("status")).content.decode()
    assert re.search(r'id="messages-archived">2<', html)
    assert re.search(r'id="bytes-stored">1\.2\xa0MB<', html)  # 1,249,600 bytes
    assert re.search(r'id="deliveries-pending">1<', html)
    assert re.search(r'id="deliveries-failed">1<', html)
    assert '<time datetime="2026-03-14T15:09:26+00:00">14 Mar 2026, 15:09 UTC</time>' in html


def test_status_of_a_new_tenant_says_no_mail_yet(client, org):
    client.force_login(org.owner)
    html = client.get(reverse("status")).content.decode()
    assert re.search(r'id="messages-archived">0<', html)
    assert re.search(r'id="bytes-stored">0\xa0bytes<', html)
    assert "none yet" in html


def test_rotated_tokens_are_listed_with_their_expiry_until_they_lapse(client, org):
    old = address_of(org.tenant)
    rotate_journal_token(org.tenant, grace=timedelta(days=7))
    client.force_login(org.admin)
    html = client.get(reverse("status")).content.decode()
    assert journal_recipient(html) == address_of(org.tenant) != old
    grace = re.search(r'id="journal-recipients-in-grace">(.*?)</table>', html, re.S).group(1)
    assert old in grace
    assert "<time datetime=" in grace

    # Time-shift: the grace period passes (rotate_journal_token takes no clock).
    JournalToken.objects.filter(tenant=org.tenant, expires_at__isnull=False).update(
        expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    html = client.get(reverse("status")).content.decode()
    assert old not in html


# --- the API --------------------------------------------------------------


def test_status_api_reports_this_tenants_numbers(client, org, contoso_mail):
    client.force_login(org.admin)
    response = client.get(reverse("api-status"))
    assert response.status_code == 200
    data = response.json()
    assert {"journal_recipient", "messages_archived", "last_received", "bytes_stored", "pending", "failed"} <= set(data)
    assert data["journal_recipient"] == address_of(org.tenant)
    assert data["messages_archived"] == 2
    assert data["bytes_stored"] == 1_249_600
    assert data["pending"] == 1
    assert data["failed"] == 1
    assert datetime.fromisoformat(data["last_received"]) == contoso_mail
    assert data["region"] == "us"


def test_status_api_of_a_new_tenant_has_null_last_received(client, org):
    client.force_login(org.owner)
    data = client.get(reverse("api-status")).json()
    assert data["messages_archived"] == 0
    assert data["bytes_stored"] == 0
    assert data["last_received"] is None


def test_status_api_without_a_session_answers_401_json(client, org):
    response = client.get(reverse("api-status"))
    assert response.status_code == 401
    assert response.json() == {"error": "authentication required"}


def test_outsider_gets_only_his_own_numbers_from_the_api(client, org, outsider, contoso_mail):
    client.force_login(outsider)
    data = client.get(reverse("api-status")).json()
    assert data["journal_recipient"] == address_of(outsider.memberships.get().tenant)
    assert data["journal_recipient"] != address_of(org.tenant)
    assert data["messages_archived"] == 1
    assert data["bytes_stored"] == 2_999_999


# --- layout ---------------------------------------------------------------


def test_home_shows_the_landing_page_to_visitors(client, db):
    html = client.get(reverse("home")).content.decode()
    assert reverse("account_signup") in html
    assert reverse("account_login") in html


def test_home_sends_members_to_status(client, org):
    client.force_login(org.owner)
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response.url == reverse("status")


def test_the_stylesheet_is_served_by_the_app(client, db):
    html = client.get(reverse("home")).content.decode()
    assert static("web/archiva.css") in html
    response = client.get(static("web/archiva.css"))
    assert response.status_code == 200
    assert b"--accent" in b"".join(response.streaming_content)
