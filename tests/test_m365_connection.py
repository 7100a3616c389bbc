"""The Microsoft 365 connection, as an admin sets it up: page and API.

Fields with GUID validation, a new certificate downloaded as `.cer` (its
private key in no response), "Test connection" against the Microsoft fake
(which verifies the certificate) naming missing permissions, and what a
successful test takes over: the organization, verified domains, the
mailbox list and members' aliases.  Owners and admins only; charlie, from
another tenant, gets 404 for Contoso's certificates.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

import pytest
from cryptography import x509
from django.urls import reverse
from django.utils import timezone

from m365.certificates import private_key_pem
from m365.connection import check_connection, connection_for, expiring_certificate
from m365.directory import sync_mailboxes
from m365.models import Certificate, Connection, Mailbox, SyncedAlias
from m365.tasks import sync_directories
from tenants.access import addresses_for
from tenants.actions import add_alias
from tenants.api_tokens import create_api_token
from tenants.models import Alias, AuditEvent, Domain, Membership
from tests.conftest import membership_of
from tests.ms_support import ALL_ROLES, connect

pytestmark = pytest.mark.django_db

SUBJECT = {"common_name": "Archiva Contoso", "org_unit": "IT", "organization": "Contoso", "country": "US"}


def bearer(user) -> dict[str, str]:
    _token, secret = create_api_token(membership_of(user), "m365 automation")
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def put_json(client, url, body, **extra):
    return client.put(url, json.dumps(body), content_type="application/json", **extra)


def post_json(client, url, body, **extra):
    return client.post(url, json.dumps(body), content_type="application/json", **extra)


def directory_for(fake, tenant, **kwargs) -> str:
    """A directory in the fake with Contoso connected to it; its id."""
    return str(connect(fake, tenant, **kwargs).directory_id)


# --- the page ------------------------------------------------------------------------


def test_an_admin_saves_the_ids_and_sees_the_webhook_and_permissions(client, org, settings):
    client.force_login(org.admin)
    directory, app = str(uuid.uuid4()), str(uuid.uuid4())

    saved = client.post(
        reverse("m365-settings"),
        {"tenant_id": directory.upper(), "client_id": app, "mail_from": "Archive@Contoso.com", "sync_folders": "on"},
    )
    page = client.get(reverse("m365-settings")).content.decode()

    assert saved.status_code == 302
    connection = Connection.objects.get(tenant=org.tenant)
    assert (str(connection.directory_id), str(connection.client_id)) == (directory, app)
    assert connection.mail_from == "archive@contoso.com" and connection.sync_folders
    assert f"{settings.SITE_ROOT}/o365" in page
    for permission in ("User.Read.All", "Mail.Read", "Calendars.Read", "Contacts.Read", "IMAP.AccessAsApp"):
        assert permission in page
    event = AuditEvent.objects.get(tenant=org.tenant, target="m365.connection")
    assert event.detail["changed"]["tenant_id"] == {"old": None, "new": directory}


@pytest.mark.parametrize("bad", ["not-a-guid", "72f988bf86f141af91ab2d7cd011db47", "72f988bf-86f1-41af-91ab"])
def test_a_malformed_id_is_refused_naming_the_field(client, org, bad):
    client.force_login(org.owner)

    answer = client.post(reverse("m365-settings"), {"tenant_id": bad, "client_id": str(uuid.uuid4())})

    assert answer.status_code == 200
    assert "field--invalid" in answer.content.decode() and "GUID" in answer.content.decode()
    assert connection_for(org.tenant).directory_id is None


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_get_403_on_the_page(client, org, role):
    client.force_login(getattr(org, role))
    assert client.get(reverse("m365-settings")).status_code == 403
    assert client.post(reverse("m365-test")).status_code == 403


def test_a_new_certificate_is_listed_and_downloads_as_der_without_its_key(client, org):
    client.force_login(org.admin)

    created = client.post(reverse("m365-certificate-new"), SUBJECT, follow=True)
    certificate = Certificate.objects.get(connection__tenant=org.tenant)
    cer = client.get(reverse("m365-certificate-cer", args=[certificate.pk]))

    page = created.content.decode()
    assert certificate.thumbprint.upper() in page
    assert "PRIVATE KEY" not in page and certificate.private_key_encrypted not in page
    assert cer["Content-Type"] == "application/pkix-cert" and ".cer" in cer["Content-Disposition"]
    assert x509.load_der_x509_certificate(cer.content).subject.rfc4514_string().startswith("C=US")
    assert AuditEvent.objects.filter(tenant=org.tenant, target="m365.certificate").count() == 1


def test_a_bad_country_is_refused_on_the_page(client, org):
    client.force_login(org.admin)
    answer = client.post(reverse("m365-certificate-new"), {**SUBJECT, "country": "U1"})
    assert answer.status_code == 200 and "country" in answer.content.decode()
    assert not Certificate.objects.exists()


def test_the_test_button_shows_organization_domains_and_missing_permissions(client, org, ms_fake):
    connect(ms_fake, org.tenant, roles=ALL_ROLES - {"Calendars.Read", "IMAP.AccessAsApp"})
    client.force_login(org.owner)

    page = client.post(reverse("m365-test"), follow=True).content.decode()

    assert "Contoso Ltd" in page and "contoso.onmicrosoft.com" in page
    assert 'id="test-missing"' in page
    missing = page.split('id="test-missing"')[1].split("</ul>")[0]
    assert "Calendars.Read" in missing and "archiving calendars" in missing and "IMAP.AccessAsApp" in missing
    assert "Mail.Read" not in missing


# --- the test itself ---------------------------------------------------------------


def test_a_good_certificate_connects_and_takes_over_organization_and_domains(org, ms_fake):
    received = []
    from tenants.signals import domain_verified

    def note(sender, domain, **kwargs):
        received.append(domain.name)

    domain_verified.connect(note)
    try:
        connection = connect(ms_fake, org.tenant, domains=[("contoso.com", True), ("contoso.net", False)])
        result = check_connection(connection, actor=membership_of(org.owner))
    finally:
        domain_verified.disconnect(note)

    org.tenant.refresh_from_db()
    connection.refresh_from_db()
    assert result.ok and result.error == ""
    assert result.organization == "Contoso Ltd" and connection.organization_name == "Contoso Ltd"
    assert org.tenant.m365_organization == "contoso.onmicrosoft.com"
    assert result.verified_domains == ["contoso.com"]
    assert Domain.objects.get(tenant=org.tenant, name="contoso.com").is_verified
    assert not Domain.objects.filter(name__in=["contoso.net", "contoso.onmicrosoft.com"]).exists()
    assert received == ["contoso.com"], "held validation mail is released as after a DNS check"
    assert result.missing == [] and connection.last_test_ok is True
    audit = AuditEvent.objects.filter(tenant=org.tenant)
    assert audit.filter(action=AuditEvent.Action.DOMAIN_VERIFIED, target="contoso.com").exists()
    assert audit.filter(action=AuditEvent.Action.SETTING_CHANGED, target="m365_organization").exists()


def test_a_certificate_not_uploaded_to_azure_fails_with_microsofts_reason(org, ms_fake):
    connection = connect(ms_fake, org.tenant, upload=False)

    result = check_connection(connection)

    connection.refresh_from_db()
    assert not result.ok
    assert "AADSTS700027" in result.error and "not registered" in result.error
    assert connection.last_test_ok is False and connection.last_test_result["error"] == result.error
    org.tenant.refresh_from_db()
    assert org.tenant.m365_organization == ""


def test_without_directory_permissions_the_test_still_names_what_is_missing(org, ms_fake):
    connection = connect(ms_fake, org.tenant, roles={"Mail.Read"})

    result = check_connection(connection)

    assert result.ok and result.organization == "" and result.verified_domains == []
    names = [m["permission"] for m in result.missing]
    assert "Organization.Read.All" in names and "Domain.Read.All" in names and "Mail.Read" not in names
    assert result.mailboxes is None


def test_a_domain_verified_by_another_tenant_stays_theirs(org, outsider, ms_fake):
    fabrikam = membership_of(outsider).tenant
    Domain.objects.create(tenant=fabrikam, name="contoso.com", txt_token="x", verified_at=timezone.now())
    connection = connect(ms_fake, org.tenant)

    result = check_connection(connection)

    assert result.ok
    assert result.domains_taken[0]["domain"] == "contoso.com"
    assert not Domain.objects.filter(tenant=org.tenant, name="contoso.com", verified_at__isnull=False).exists()


# --- mailboxes and aliases ---------------------------------------------------------


def populate(fake, directory: str) -> dict[str, object]:
    return {
        "alice": fake.add_user(
            directory, "alice@contoso.com", "Alice", aliases=["a.smith@contoso.com", "alice@contoso.net"]
        ),
        "erin": fake.add_user(directory, "erin@contoso.com", "Erin", aliases=["erin.old@contoso.com"]),
        "sales": fake.add_user(directory, "sales@contoso.com", "Sales", mailbox="shared"),
        "room": fake.add_user(directory, "room1@contoso.com", "Room 1", mailbox="room"),
        "nobody": fake.add_user(directory, "service@contoso.com", "Service", mailbox=None),
    }


def test_the_mailbox_list_is_synced_with_kinds_and_proxy_addresses(org, ms_fake):
    connection = connect(ms_fake, org.tenant)
    users = populate(ms_fake, str(connection.directory_id))

    result = sync_mailboxes(connection)

    rows = {m.user_principal_name: m for m in Mailbox.objects.filter(tenant=org.tenant)}
    assert result.users == 5 and result.mailboxes == 4
    assert rows["alice@contoso.com"].proxy_addresses == [
        "alice@contoso.com",
        "a.smith@contoso.com",
        "alice@contoso.net",
    ]
    assert rows["alice@contoso.com"].graph_id == users["alice"].id
    assert rows["sales@contoso.com"].kind == "shared" and rows["room1@contoso.com"].kind == "room"
    assert rows["service@contoso.com"].has_mailbox is False
    connection.refresh_from_db()
    assert connection.mailboxes_synced_at is not None


def test_members_get_their_proxy_addresses_as_aliases_and_lose_them_with_the_directory(org, ms_fake):
    connection = connect(ms_fake, org.tenant)
    users = populate(ms_fake, str(connection.directory_id))
    erin = membership_of(org.user)
    add_alias(membership_of(org.owner), erin, "erin.shared@contoso.com")  # by hand: never touched by the sync

    first = sync_mailboxes(connection, actor=membership_of(org.admin))
    assert first.aliases_added == 3
    assert {"a.smith@contoso.com", "alice@contoso.net"} <= set(addresses_for(membership_of(org.owner)))
    assert set(addresses_for(erin)) == {"erin@contoso.com", "erin.old@contoso.com", "erin.shared@contoso.com"}

    users["erin"].proxy_addresses.remove("smtp:erin.old@contoso.com")
    second = sync_mailboxes(connection)

    assert (second.aliases_added, second.aliases_removed) == (0, 1)
    assert set(addresses_for(erin)) == {"erin@contoso.com", "erin.shared@contoso.com"}
    assert SyncedAlias.objects.count() == 2
    assert (
        AuditEvent.objects.filter(
            action=AuditEvent.Action.ALIAS_ADDED, detail__source="microsoft 365 proxy addresses"
        ).count()
        == 3
    )


def test_an_address_already_another_members_alias_is_left_alone(org, ms_fake):
    connection = connect(ms_fake, org.tenant)
    populate(ms_fake, str(connection.directory_id))
    add_alias(membership_of(org.owner), membership_of(org.auditor), "erin.old@contoso.com")

    result = sync_mailboxes(connection)

    assert Alias.objects.get(address="erin.old@contoso.com").membership == membership_of(org.auditor)
    assert result.conflicts == ["erin.old@contoso.com is an alias of another member already"]


def test_the_daily_task_tests_every_configured_connection_and_syncs_the_good_ones(org, outsider, ms_fake):
    connection = connect(ms_fake, org.tenant)
    populate(ms_fake, str(connection.directory_id))
    broken = connect(ms_fake, membership_of(outsider).tenant, upload=False)  # the certificate is not in Azure
    connection_for(make_org_tenant_without_ids())  # no IDs yet: not tested at all

    assert sync_directories() == 1
    assert Mailbox.objects.filter(tenant=org.tenant, has_mailbox=True).count() == 4
    broken.refresh_from_db()
    assert broken.last_test_ok is False and "AADSTS700027" in broken.last_test_result["error"]


def make_org_tenant_without_ids():
    from tenants.actions import create_tenant
    from tests.conftest import make_user

    return create_tenant("Northwind", make_user("nina@northwind.example"))


def test_sync_now_on_the_page(client, org, ms_fake):
    connection = connect(ms_fake, org.tenant)
    populate(ms_fake, str(connection.directory_id))
    client.force_login(org.admin)

    page = client.post(reverse("m365-sync"), follow=True).content.decode()

    assert "4 mailboxes synchronised" in page
    assert 'id="mailbox-count">4<' in page


# --- the API ---------------------------------------------------------------------


def test_the_api_puts_and_gets_the_connection_with_a_bearer_token(client, org):
    auth = bearer(org.admin)
    directory, app = str(uuid.uuid4()), str(uuid.uuid4())

    put = put_json(
        client, "/api/v1/m365/connection", {"tenant_id": directory, "client_id": app, "sync_folders": True}, **auth
    )
    got = client.get("/api/v1/m365/connection", **auth).json()

    assert put.status_code == 200
    assert AuditEvent.objects.get(target="m365.connection").token.name == "m365 automation"
    assert got["tenant_id"] == directory and got["client_id"] == app and got["sync_folders"] is True
    assert got["mail_from"] == "" and got["webhook_url"].endswith("/o365")
    assert {p["permission"] for p in got["permissions"]} >= {"Mail.Read", "Contacts.Read"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tenant_id": "nope"}, "tenant_id"),
        ({"client_id": 42}, "client_id"),
        ({"sync_folders": "yes"}, "sync_folders"),
        ({"mail_from": "not an address"}, "mail_from"),
        ({"secret": "x"}, "unknown fields: secret"),
    ],
)
def test_the_api_refuses_bad_fields_naming_them(client, org, body, field):
    answer = put_json(client, "/api/v1/m365/connection", body, **bearer(org.owner))
    assert answer.status_code == 400 and field in answer.json()["error"]


def test_the_api_creates_a_certificate_and_serves_its_cer_never_the_key(client, org):
    auth = bearer(org.owner)

    created = post_json(client, "/api/v1/m365/certificates", SUBJECT, **auth)
    document = created.json()
    cer = client.get(f"/api/v1/m365/certificates/{document['id']}.cer", **auth)

    assert created.status_code == 201
    assert set(document) >= {"id", "thumbprint", "not_after", "certificate_pem"}
    assert "PRIVATE" not in created.content.decode()
    certificate = Certificate.objects.get(pk=document["id"])
    assert private_key_pem(certificate).split("\n")[1] not in created.content.decode()
    assert x509.load_der_x509_certificate(cer.content) == x509.load_pem_x509_certificate(
        document["certificate_pem"].encode()
    )
    not_after = dt.datetime.fromisoformat(document["not_after"])
    assert dt.timedelta(days=729) < not_after - timezone.now() < dt.timedelta(days=731)


def test_the_api_refuses_a_bad_subject(client, org):
    answer = post_json(client, "/api/v1/m365/certificates", {"common_name": ""}, **bearer(org.owner))
    assert answer.status_code == 400 and "common name" in answer.json()["error"]


def test_the_api_test_runs_against_microsoft(client, org, ms_fake):
    connect(ms_fake, org.tenant, roles={"User.Read.All", "Organization.Read.All", "Domain.Read.All", "Mail.Read"})

    answer = client.post("/api/v1/m365/test", **bearer(org.admin))

    result = answer.json()
    assert answer.status_code == 200 and result["ok"] is True
    assert result["organization"] == "Contoso Ltd" and result["verified_domains"] == ["contoso.com"]
    assert "Calendars.Read" in [m["permission"] for m in result["missing"]]


def test_the_api_test_of_an_unconfigured_connection_says_what_to_set(client, org):
    answer = client.post("/api/v1/m365/test", **bearer(org.admin))
    assert answer.status_code == 409 and "tenant_id" in answer.json()["error"]


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_get_403_from_the_api(client, org, role):
    auth = bearer(getattr(org, role))
    assert client.get("/api/v1/m365/connection", **auth).status_code == 403
    assert put_json(client, "/api/v1/m365/connection", {}, **auth).status_code == 403
    assert post_json(client, "/api/v1/m365/certificates", SUBJECT, **auth).status_code == 403
    assert client.post("/api/v1/m365/test", **auth).status_code == 403


def test_charlie_gets_404_for_contosos_certificate(client, org, outsider):
    certificate = Certificate.objects.get(
        pk=post_json(client, "/api/v1/m365/certificates", SUBJECT, **bearer(org.owner)).json()["id"]
    )

    assert client.get(f"/api/v1/m365/certificates/{certificate.pk}.cer", **bearer(outsider)).status_code == 404
    client.force_login(outsider)
    assert client.get(reverse("m365-certificate-cer", args=[certificate.pk])).status_code == 404


def test_the_api_without_credentials_is_401(client, org):
    assert client.get("/api/v1/m365/connection").status_code == 401
    assert client.post("/api/v1/m365/test").status_code == 401


def test_a_session_put_needs_the_csrf_token(org):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(org.admin)

    refused = put_json(browser, "/api/v1/m365/connection", {"sync_folders": True})
    browser.get(reverse("m365-settings"))
    allowed = put_json(
        browser, "/api/v1/m365/connection", {"sync_folders": True}, HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value
    )

    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert allowed.status_code == 200


# --- status warning and secrecy ---------------------------------------------------


def test_status_warns_admins_30_days_before_the_certificate_expires(client, org):
    post_json(client, "/api/v1/m365/certificates", SUBJECT, **bearer(org.owner))
    certificate = Certificate.objects.get()
    client.force_login(org.admin)
    assert 'id="m365-certificate-expiry"' not in client.get(reverse("status")).content.decode()

    Certificate.objects.filter(pk=certificate.pk).update(not_after=timezone.now() + dt.timedelta(days=20))
    warned = client.get(reverse("status")).content.decode()
    client.force_login(org.user)
    user_page = client.get(reverse("status")).content.decode()

    assert 'id="m365-certificate-expiry"' in warned and certificate.thumbprint.upper() in warned
    assert 'id="m365-certificate-expiry"' not in user_page
    assert expiring_certificate(org.tenant) == certificate


def test_a_newer_certificate_ends_the_warning(org):
    connection = connection_for(org.tenant)
    from m365.certificates import Subject, create_certificate

    old = create_certificate(connection, Subject(common_name="old"))
    Certificate.objects.filter(pk=old.pk).update(not_after=timezone.now() + dt.timedelta(days=5))
    assert expiring_certificate(org.tenant) == Certificate.objects.get(pk=old.pk)

    create_certificate(connection, Subject(common_name="new"))
    assert expiring_certificate(org.tenant) is None


def test_no_log_line_carries_the_private_key(org, ms_fake, caplog):
    caplog.set_level(logging.DEBUG)
    connection = connect(ms_fake, org.tenant, upload=False)
    check_connection(connection)
    ms_fake.upload_certificate(str(connection.client_id), connection.certificates.get().certificate_pem)
    check_connection(connection)

    key_lines = private_key_pem(connection.certificates.get()).splitlines()[1:3]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and not any(line in logged for line in key_lines)
    assert "PRIVATE KEY" not in logged


def test_the_test_result_is_stored_for_the_page(org, ms_fake):
    connection = connect(ms_fake, org.tenant)
    check_connection(connection)
    connection.refresh_from_db()
    assert connection.last_test_result["organization"] == "Contoso Ltd"
    assert Membership.objects.filter(tenant=org.tenant).count() == 4
