"""System Status for setting up: journal address rotation with a grace
period, live setup checks, and copy buttons that degrade to plain text."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone

from ingest.models import Delivery
from tenants.actions import add_domain, verify_domain
from tenants.models import JournalToken, Membership
from tests import archive_support
from tests.smtp_support import journal_address, send

pytestmark = pytest.mark.django_db

CORPUS_MESSAGE = b"From: alice@contoso.com\r\nTo: erin@contoso.com\r\nSubject: hello\r\n\r\nbody\r\n"


def current(tenant) -> JournalToken:
    return JournalToken.objects.get(tenant=tenant, expires_at__isnull=True)


def recipient(html: str) -> str:
    return re.sub(r"<[^>]+>", "", re.search(r'id="journal-recipient"[^>]*>(.*?)</code>', html).group(1))


def deliver(tenant, rcpt: list[str], when=None):
    """A message to `rcpt` stored and recorded as the ingest does, received at `when` (time-shifted)."""
    delivery = archive_support.deliver(tenant, CORPUS_MESSAGE, rcpt)
    return archive_support.received_at(delivery, when or timezone.now())


# --- rotation -----------------------------------------------------------------------------


def test_an_admin_rotates_the_journal_address_and_the_old_one_is_shown_until_it_lapses(client, org):
    old = current(org.tenant)
    client.force_login(org.admin)
    response = client.post(reverse("rotate-token"), follow=True)
    html = response.content.decode()
    assert "New journal address issued. The previous one keeps working for 7 days" in html

    new = current(org.tenant)
    assert new.token != old.token
    assert recipient(html) == f"journal-{new.token}@archive.archiva.com"
    old.refresh_from_db()
    assert timedelta(days=7) - timedelta(minutes=1) < old.expires_at - timezone.now() <= timedelta(days=7)
    grace = re.search(r'id="journal-recipients-in-grace">(.*?)</table>', html, re.S).group(1)
    assert f"journal-{old.token}@archive.archiva.com" in grace
    assert f"{old.expires_at:%-d %b %Y, %H:%M} UTC</time> (in 6\xa0days, 23\xa0hours)" in grace


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_cannot_rotate(client, org, role):
    old = current(org.tenant)
    client.force_login(getattr(org, role))
    assert client.post(reverse("rotate-token")).status_code == 403
    assert current(org.tenant) == old
    assert 'id="rotate-journal-address"' not in client.get(reverse("status")).content.decode()


def test_rotation_is_a_post_and_the_outsider_rotates_only_his_own(client, org, outsider):
    contoso = current(org.tenant)
    client.force_login(outsider)
    assert client.get(reverse("rotate-token")).status_code == 405
    assert client.post(reverse("rotate-token")).status_code == 302
    assert current(org.tenant) == contoso
    assert JournalToken.objects.filter(tenant=outsider.memberships.get().tenant).count() == 2


def test_visitors_cannot_rotate(client, org):
    response = client.post(reverse("rotate-token"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.django_db(transaction=True)
def test_the_old_address_keeps_delivering_during_the_grace_period(client, org, ingest, tls_files):
    """Over real SMTP: after a rotation, mail to both the old and the new address is archived."""
    old_address = journal_address(org.tenant)
    client.force_login(org.owner)
    client.post(reverse("rotate-token"))
    new_address = journal_address(org.tenant)
    assert new_address != old_address

    code, _ = send(ingest, tls_files, [old_address], CORPUS_MESSAGE)
    assert code == 250
    deadline = time.monotonic() + 10
    while True:  # the ingest's token cache sees the new token within its refresh interval
        try:
            code, _ = send(ingest, tls_files, [new_address], CORPUS_MESSAGE)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert code == 250
    rcpts = sorted(r for d in Delivery.objects.filter(tenant=org.tenant) for r in d.rcpt_to)
    assert rcpts == sorted([old_address, new_address])


# --- setup checks -----------------------------------------------------------------------------


def checks(client) -> dict[str, str]:
    html = client.get(reverse("status")).content.decode()
    items = re.findall(r'<li class="check( check--ok)?" id="check-(\w+)">(.*?)</li>', html, re.S)
    return {
        name: ("done" if ok else "open") + ": " + " ".join(re.sub(r"<[^>]+>", " ", text).split())
        for ok, name, text in items
    }


def test_a_new_tenant_has_every_check_open(client, org):
    client.force_login(org.owner)
    found = checks(client)
    assert found["domain"].startswith("open: Domain verified not yet")
    assert found["validation"] == "open: Connector validation mail received not yet"
    assert found["journal"] == "open: Journal report received none yet"
    assert found["search"] == "open: First search not yet · Search your archive"


def test_setup_comes_first_with_a_reload_link_and_the_from_now_on_sentence(client, org):
    client.force_login(org.owner)
    html = client.get(reverse("status")).content.decode()
    assert html.index('id="setup"') < html.index('id="counters-heading"')
    assert 'id="setup-reload"' in html and "status-refresh.js" in html
    assert "archives only mail sent or received from now on" in html and 'href="/import/"' in html
    client.get(reverse("search"), {"q": "anything"})
    assert checks(client)["search"].startswith("done: ✓ First search done:")


def test_the_organization_check_suggests_what_the_reports_carry(client, org):
    from tests.archive_support import archive, corpus

    archive(org.tenant, corpus("01-simple.eml"))  # Exchange's reports carry X-OriginatorOrg
    client.force_login(org.owner)
    html = client.get(reverse("status")).content.decode()
    assert 'value="contoso.onmicrosoft.com" maxlength="253" list="seen-originators"' in html
    assert "Seen in your journal reports: <code>contoso.onmicrosoft.com</code>" in html


def test_checks_turn_done_as_mail_arrives_and_the_domain_is_verified(client, org, dns_server):
    owner = Membership.objects.get(user=org.owner)
    pending = add_domain(owner, "contoso.com")
    client.force_login(org.admin)
    assert "(1 waiting for its DNS record)" in checks(client)["domain"]

    dns_server.add_txt(pending.txt_name, pending.txt_value)
    verify_domain(pending, owner)
    deliver(org.tenant, ["Archive@Archive.archiva.com"], timezone.now() - timedelta(hours=2))
    deliver(org.tenant, [journal_address(org.tenant)], timezone.now() - timedelta(minutes=5))
    found = checks(client)
    assert found["domain"].startswith("done: ✓ Domain verified done: contoso.com")
    assert found["validation"].startswith("done: ✓ Connector validation mail received done:")
    assert "(2 hours ago)" in found["validation"]
    assert "(5 minutes ago)" in found["journal"]


def test_the_validation_mail_alone_is_not_a_journal_report(client, org):
    deliver(org.tenant, ["archive@archive.archiva.com"])
    client.force_login(org.owner)
    found = checks(client)
    assert found["validation"].startswith("done")
    assert found["journal"].startswith("open")


def test_the_outsiders_mail_does_not_tick_contosos_checks(client, org, outsider):
    deliver(outsider.memberships.get().tenant, ["archive@archive.archiva.com"])
    client.force_login(org.owner)
    assert checks(client)["validation"].startswith("open")


# --- copy buttons ---------------------------------------------------------------------------------


def test_copy_buttons_are_hidden_until_the_script_runs_and_point_at_real_values(client, org):
    client.force_login(org.owner)
    html = client.get(reverse("status")).content.decode()
    buttons = re.findall(
        r'<button type="button" class="copy-button" data-copy="([\w-]+)"[^>]*hidden>Copy</button>', html
    )
    assert {"journal-recipient", "validation-address", "smart-host", "rule-recipient"} <= set(buttons)
    for target in buttons:
        assert f'id="{target}"' in html
    assert f'<script src="{static("web/copy.js")}" defer></script>' in html
    script = b"".join(client.get(static("web/copy.js")).streaming_content).decode()
    assert "navigator.clipboard.writeText" in script
