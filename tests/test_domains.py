"""Domains (`/domains/`): an admin claims a domain and proves it with a DNS TXT record.

Verification asks a real DNS server on loopback (tests/dns_support.py)
through the resolver named by ARCHIVA_DNS_RESOLVER.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.urls import reverse

from infra.dns import LookupFailed, parse_resolver, txt_records
from infra.env import ConfigError
from tenants.actions import add_domain, remove_domain, verify_domain
from tenants.models import Domain, Membership

pytestmark = pytest.mark.django_db


def add(client, name):
    return client.post(reverse("domains"), {"name": name})


def domain_of(tenant, name="contoso.com") -> Domain:
    return Domain.objects.get(tenant=tenant, name=name)


def membership(user) -> Membership:
    return Membership.objects.get(user=user)


# --- adding ---------------------------------------------------------------------


def test_admin_adds_a_domain_and_sees_the_txt_record_to_create(client, org):
    client.force_login(org.admin)
    response = add(client, "  Contoso.COM. ")
    assert response.status_code == 302
    domain = domain_of(org.tenant)
    assert domain.verified_at is None
    assert len(domain.txt_token) == 32

    html = client.get(reverse("domains")).content.decode()
    assert f'id="domain-{domain.pk}-txt-name">_archiva.contoso.com<' in html
    assert f'id="domain-{domain.pk}-txt-value">archiva-verification={domain.txt_token}<' in html
    assert "Not verified yet" in html
    assert "contoso.com added" in html


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("contoso", "is not a valid domain name"),
        ("not a domain.com", "is not a valid domain name"),
        ("-contoso.com", "is not a valid domain name"),
        ("contoso.123", "is not a valid domain name"),
        ("https://contoso.com", "Enter the domain only"),
        ("alice@contoso.com", "Enter the domain only"),
        ("archiva.com", "belongs to Archiva"),
        ("archive.archiva.com", "belongs to Archiva"),
        ("", "This field is required."),
    ],
)
def test_a_malformed_domain_gets_the_form_back_with_the_reason_next_to_the_field(client, org, typed, reason):
    client.force_login(org.owner)
    response = add(client, typed)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="id_name_error"' in html
    assert reason in html
    assert re.search(r'<input [^>]*aria-invalid="true" aria-describedby="[^"]*id_name_error[^"]*" id="id_name"', html)
    assert not Domain.objects.exists()


def test_an_international_domain_is_stored_as_its_ascii_form(client, org):
    client.force_login(org.owner)
    add(client, "Bücher.example")
    assert domain_of(org.tenant, "xn--bcher-kva.example")


def test_adding_the_same_domain_twice_says_so(client, org):
    client.force_login(org.owner)
    add(client, "contoso.com")
    response = add(client, "CONTOSO.com")
    assert "contoso.com is already on your list." in response.content.decode()
    assert Domain.objects.count() == 1


# --- verifying --------------------------------------------------------------------


def test_the_domain_is_verified_once_its_txt_record_is_published(client, org, dns_server):
    client.force_login(org.admin)
    add(client, "contoso.com")
    domain = domain_of(org.tenant)
    dns_server.add_txt("_archiva.contoso.com", "v=something-else", f"archiva-verification={domain.txt_token}")

    response = client.post(reverse("domain-verify", args=[domain.pk]), follow=True)
    assert "contoso.com is verified." in response.content.decode()
    domain.refresh_from_db()
    assert domain.verified_at is not None
    assert ("_archiva.contoso.com", "TXT") in dns_server.queries  # our server was asked
    assert f'id="domain-{domain.pk}-status">✓ Verified' in response.content.decode()


def test_without_a_record_the_admin_is_told_to_wait_and_retry(client, org, dns_server):
    client.force_login(org.admin)
    add(client, "contoso.com")
    domain = domain_of(org.tenant)
    html = client.post(reverse("domain-verify", args=[domain.pk]), follow=True).content.decode()
    assert "No TXT record found at _archiva.contoso.com yet." in html
    domain.refresh_from_db()
    assert domain.verified_at is None


def test_a_wrong_record_is_shown_beside_the_expected_one(client, org, dns_server):
    client.force_login(org.admin)
    add(client, "contoso.com")
    domain = domain_of(org.tenant)
    dns_server.add_txt("_archiva.contoso.com", "archiva-verification=typo")
    html = client.post(reverse("domain-verify", args=[domain.pk]), follow=True).content.decode()
    assert "does not match" in html
    assert f"archiva-verification={domain.txt_token}" in html
    assert "archiva-verification=typo" in html
    domain.refresh_from_db()
    assert domain.verified_at is None


def test_a_record_at_the_apex_does_not_count(org, dns_server):
    domain = add_domain(membership(org.owner), "contoso.com")
    dns_server.add_txt("contoso.com", domain.txt_value)
    with pytest.raises(Exception, match="No TXT record found"):
        verify_domain(domain)


@pytest.mark.parametrize("failure", ["fail", "ignore"])
def test_a_dns_server_that_fails_or_stays_silent_means_try_again_later(client, org, dns_server, failure):
    client.force_login(org.admin)
    add(client, "contoso.com")
    domain = domain_of(org.tenant)
    getattr(dns_server, failure)("_archiva.contoso.com")
    html = client.post(reverse("domain-verify", args=[domain.pk]), follow=True).content.decode()
    assert "The DNS did not answer for _archiva.contoso.com. Try again in a few minutes." in html
    domain.refresh_from_db()
    assert domain.verified_at is None


def test_long_txt_values_split_into_strings_are_joined(dns_server):
    value = "archiva-verification=" + "x" * 300
    dns_server.add_txt("_archiva.long.example", value)
    assert txt_records("_archiva.long.example") == [value]
    assert txt_records("nothing.example") == []
    dns_server.fail("broken.example")
    with pytest.raises(LookupFailed):
        txt_records("broken.example")


def test_a_domain_verified_by_one_tenant_cannot_be_verified_by_another(client, org, outsider, dns_server):
    """A verified name routes mail, so one tenant of the region may hold it."""
    ours = add_domain(membership(org.owner), "contoso.com")
    theirs = add_domain(membership(outsider), "contoso.com")  # both claims may wait
    dns_server.add_txt("_archiva.contoso.com", ours.txt_value, theirs.txt_value)
    verify_domain(ours)

    client.force_login(outsider)
    html = client.post(reverse("domain-verify", args=[theirs.pk]), follow=True).content.decode()
    assert "contoso.com is verified by another organization." in html
    theirs.refresh_from_db()
    assert theirs.verified_at is None
    # …and a new claim is refused up front.
    remove_domain(membership(outsider), theirs)
    assert "contoso.com is verified by another organization" in add(client, "contoso.com").content.decode()
    assert not Domain.objects.filter(tenant=theirs.tenant).exists()


def test_the_ingest_finds_verified_domains_by_name_tenant_and_update_time(org, outsider, dns_server):
    """The contract of the SMTP ingest's routing of archive@ mail."""
    domain = add_domain(membership(org.owner), "contoso.com")
    add_domain(membership(outsider), "fabrikam.com")
    before = domain.updated_at
    dns_server.add_txt("_archiva.contoso.com", domain.txt_value)
    verify_domain(domain)
    rows = list(Domain.objects.filter(verified_at__isnull=False).values("name", "tenant_id", "updated_at"))
    assert [(r["name"], r["tenant_id"]) for r in rows] == [("contoso.com", org.tenant.pk)]
    assert rows[0]["updated_at"] > before


def test_removing_a_domain(client, org):
    client.force_login(org.owner)
    add(client, "contoso.com")
    domain = domain_of(org.tenant)
    html = client.post(reverse("domain-remove", args=[domain.pk]), follow=True).content.decode()
    assert "contoso.com removed." in html
    assert not Domain.objects.exists()


# --- who may ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_get_403_on_every_domain_page(client, org, role):
    domain = add_domain(membership(org.owner), "contoso.com")
    client.force_login(getattr(org, role))
    assert client.get(reverse("domains")).status_code == 403
    assert add(client, "evil.example").status_code == 403
    assert client.post(reverse("domain-verify", args=[domain.pk])).status_code == 403
    assert client.post(reverse("domain-remove", args=[domain.pk])).status_code == 403
    assert list(Domain.objects.values_list("name", flat=True)) == ["contoso.com"]


def test_the_outsider_gets_404_for_contosos_domains_and_sees_only_his_own(client, org, outsider):
    domain = add_domain(membership(org.owner), "contoso.com")
    client.force_login(outsider)
    html = client.get(reverse("domains")).content.decode()
    assert "contoso.com" not in html
    assert "No domains yet." in html
    assert client.post(reverse("domain-verify", args=[domain.pk])).status_code == 404
    assert client.post(reverse("domain-remove", args=[domain.pk])).status_code == 404
    assert Domain.objects.filter(pk=domain.pk).exists()


def test_visitors_are_sent_to_sign_in(client, org):
    response = client.get(reverse("domains"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_domain_pages_answer_only_their_methods(client, org):
    client.force_login(org.owner)
    domain = add_domain(membership(org.owner), "contoso.com")
    assert client.get(reverse("domain-verify", args=[domain.pk])).status_code == 405
    assert client.get(reverse("domain-remove", args=[domain.pk])).status_code == 405


# --- configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::1]", ("2001:db8::1", 53)),
    ],
)
def test_the_resolver_setting_reads_host_and_port(value, expected):
    assert parse_resolver(value) == expected


@pytest.mark.parametrize("value", ["dns.google", "127.0.0.1:dns", "127.0.0.1:0", "127.0.0.1:70000", "[::1", "[::1]x"])
def test_a_malformed_resolver_setting_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="ARCHIVA_DNS_RESOLVER="):
        parse_resolver(value)


def test_a_malformed_resolver_stops_the_process_at_start():
    env = {**os.environ, "ARCHIVA_DNS_RESOLVER": "resolver.example:53", "DJANGO_SETTINGS_MODULE": "archiva.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ARCHIVA_DNS_RESOLVER='resolver.example:53'" in result.stderr
