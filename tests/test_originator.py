"""X-OriginatorOrg: reports from another Microsoft 365 organization are archived but flagged."""

from __future__ import annotations

import pytest
from django.urls import reverse

from archive.models import Message
from ingest.models import Delivery
from ingest.originator import originator_org
from tenants.actions import set_m365_organization
from tests.archive_support import archive, corpus
from tests.conftest import PASSWORD


def foreign(raw: bytes) -> bytes:
    return raw.replace(b"X-OriginatorOrg: contoso.onmicrosoft.com", b"X-OriginatorOrg: Evil.onmicrosoft.com").replace(
        b"q3-numbers-0001@contoso.com", b"forged-0001@evil.example"
    )


def login(client, user):
    assert client.login(email=user.email, password=PASSWORD)


def test_the_originator_is_read_from_the_top_level_headers_only():
    raw = corpus("01-simple.eml")
    assert originator_org(raw) == "contoso.onmicrosoft.com"
    assert originator_org(b"Subject: x\r\n\r\nX-OriginatorOrg: body.example\r\n") == ""
    assert originator_org(b"X-OriginatorOrg:  MiXeD.onmicrosoft.com \r\n\r\n") == "mixed.onmicrosoft.com"
    assert originator_org(b"\xff\xfe garbage") == ""


def test_a_report_from_another_organization_is_archived_and_flagged(org, client):
    set_m365_organization(org.tenant, "Contoso.onmicrosoft.com")
    ours = archive(org.tenant, corpus("01-simple.eml"))
    theirs = archive(org.tenant, foreign(corpus("01-simple.eml")))
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert (ours.originator_org, ours.originator_mismatch) == ("contoso.onmicrosoft.com", False)
    assert (theirs.originator_org, theirs.originator_mismatch) == ("evil.onmicrosoft.com", True)
    assert theirs.status == Delivery.Status.ARCHIVED and Message.objects.filter(tenant=org.tenant).count() == 2

    login(client, org.auditor)
    body = client.get(reverse("api-status")).json()
    assert body["originator_mismatches"] == 1 and body["m365_organization"] == "contoso.onmicrosoft.com"
    page = client.get(reverse("status")).content.decode()
    assert "evil.onmicrosoft.com" in page and 'id="originator-mismatches">1<' in page


@pytest.mark.parametrize("path", ["one report", "a batch"])
def test_a_report_from_another_organization_is_flagged_even_when_it_cannot_be_parsed(org, monkeypatch, path):
    from archive.parser import journal
    from archive.tasks import process_deliveries
    from tests.archive_support import deliver, process

    set_m365_organization(org.tenant, "contoso.onmicrosoft.com")
    delivery = deliver(org.tenant, foreign(corpus("01-simple.eml")))

    def broken(raw, **kwargs):
        raise ValueError("parser bug")

    monkeypatch.setattr(journal, "parse_report", broken)
    process(delivery.pk) if path == "one report" else process_deliveries.run([delivery.pk])
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PARSE_FAILED
    assert (delivery.originator_org, delivery.originator_mismatch) == ("evil.onmicrosoft.com", True)


def test_the_status_page_never_counts_another_tenants_flagged_reports(org, outsider, client):
    fabrikam = outsider.memberships.get().tenant
    set_m365_organization(fabrikam, "fabrikam.onmicrosoft.com")
    archive(fabrikam, foreign(corpus("01-simple.eml")))  # flagged, but Fabrikam's
    login(client, org.auditor)
    body = client.get(reverse("api-status")).json()
    assert body["originator_mismatches"] == 0
    assert "evil.onmicrosoft.com" not in client.get(reverse("status")).content.decode()
    client.force_login(outsider)
    assert client.get(reverse("api-status")).json()["originator_mismatches"] == 1


def test_without_a_known_organization_nothing_is_flagged(org):
    delivery = archive(org.tenant, foreign(corpus("01-simple.eml")))
    delivery.refresh_from_db()
    assert delivery.originator_org == "evil.onmicrosoft.com" and not delivery.originator_mismatch


def test_only_admins_set_the_organization_and_bad_names_are_refused(org, outsider, client):
    url = reverse("set-organization")
    login(client, org.user)
    assert client.post(url, {"m365_organization": "x.onmicrosoft.com"}).status_code == 403
    login(client, org.auditor)
    assert client.post(url, {"m365_organization": "x.onmicrosoft.com"}).status_code == 403
    login(client, org.admin)
    for bad in ("not a name!", "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + "." + "e" * 60 + ".com"):
        response = client.post(url, {"m365_organization": bad}, follow=True)
        assert response.status_code == 200 and "is not an organization name" in response.content.decode()
    org.tenant.refresh_from_db()
    assert org.tenant.m365_organization == ""
    client.post(url, {"m365_organization": "Contoso.onmicrosoft.com"})
    org.tenant.refresh_from_db()
    assert org.tenant.m365_organization == "contoso.onmicrosoft.com"
    # charlie changes his own tenant, never Contoso.
    login(client, outsider)
    client.post(url, {"m365_organization": "fabrikam.onmicrosoft.com"})
    org.tenant.refresh_from_db()
    assert org.tenant.m365_organization == "contoso.onmicrosoft.com"
    assert outsider.memberships.get().tenant.m365_organization == "fabrikam.onmicrosoft.com"


@pytest.mark.parametrize("method", ["get", "put"])
def test_the_organization_endpoint_takes_post_only(org, client, method):
    login(client, org.admin)
    assert getattr(client, method)(reverse("set-organization")).status_code == 405
