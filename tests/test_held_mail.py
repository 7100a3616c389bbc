"""The region's holding area, over real sockets: mail accepted for no tenant (yet).

Exchange sends the connector's validation mail while the admin creates the
connector, usually before the sender's domain is verified here: it is
accepted, held outside every tenant's bucket, announced (domain and time
only) to a tenant that added the domain, and moved into that tenant's
archive when it verifies the domain.  Mail to postmaster is held the same
way and delivered to the operator.  Held mail nobody claims is deleted
after 14 days.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from ingest.held import HeldMessage, deliver_held, held_bucket, tend
from ingest.models import Delivery
from regions.current import current_region
from tenants.actions import add_domain, verify_domain
from tenants.models import Membership
from tests.archive_support import backend_fixture, corpus, process, search_ids  # noqa: F401 (the `backend` fixture)
from tests.dns_support import verified_domain
from tests.smtp_support import count_rejections, journal_address, send, stored_objects

VALIDATION_SENDER = "admin@contoso.com"


def queue_id(reply: bytes) -> str:
    return reply.decode().split()[1]


def add_contoso(org):
    return add_domain(Membership.objects.get(user=org.owner), "contoso.com")


def send_validation_mail(ingest, tls_files) -> HeldMessage:
    code, reply = send(
        ingest,
        tls_files,
        [current_region().validation_address],
        corpus("10-connector-validation.eml"),
        VALIDATION_SENDER,
    )
    assert code == 250, reply
    return HeldMessage.objects.get(queue_id=queue_id(reply))


def status_html(client, user) -> str:
    client.force_login(user)
    response = client.get(reverse("status"))
    assert response.status_code == 200
    return response.content.decode()


def held_object(settings, held: HeldMessage):
    """Where the folder store keeps a held message (in a pack with the others of its batch)."""
    return settings.DATA_DIR / "buckets" / held_bucket() / held.storage_key


def test_validation_mail_from_an_unverified_domain_is_held_outside_every_tenant(
    ingest, tls_files, org, outsider, client, settings
):
    add_contoso(org)
    add_domain(Membership.objects.get(user=outsider), "fabrikam.com")
    held = send_validation_mail(ingest, tls_files)
    assert held.kind == HeldMessage.Kind.VALIDATION and held.sender_domain == "contoso.com"
    assert held.rcpt_to == [current_region().validation_address] and held.released_at is None
    assert held.read() == corpus("10-connector-validation.eml")  # durable before the 250, checked by its hash
    assert held_object(settings, held).is_file() and held.storage_key.startswith("pack/")
    assert not stored_objects(settings.DATA_DIR / "buckets" / org.tenant.bucket)
    assert not Delivery.objects.exists()
    # The tenant that added contoso.com learns that it arrived, not what it says.
    html = status_html(client, org.owner)
    notice = re.search(r'<p class="note" role="status" id="held-validation-1">(.*?)</p>', html, re.S).group(1)
    assert "A validation mail from <code>contoso.com</code> arrived at" in notice
    assert "verify <code>contoso.com</code>" in notice
    assert "Test message for connector validation" not in html
    # Charlie, who did not add contoso.com, sees nothing of it.
    assert "contoso.com" not in status_html(client, outsider)


def test_verifying_the_domain_moves_the_held_mail_into_the_tenants_archive_and_search(
    ingest, tls_files, org, client, settings, dns_server, backend
):
    domain = add_contoso(org)
    held = send_validation_mail(ingest, tls_files)
    dns_server.add_txt(domain.txt_name, domain.txt_value)
    verify_domain(domain)
    delivery = Delivery.objects.get(tenant=org.tenant, queue_id=held.queue_id)
    assert delivery.rcpt_to == [current_region().validation_address] and delivery.mail_from == VALIDATION_SENDER
    assert delivery.read_report() == corpus("10-connector-validation.eml")
    assert process(delivery.pk) == Delivery.Status.ARCHIVED
    assert len(search_ids(backend, org.tenant, "connector validation")) == 1
    held.refresh_from_db()
    assert held.released_at is not None and held.tenant == org.tenant
    assert not held_object(settings, held).exists()  # the held copy is deleted
    html = status_html(client, org.owner)
    assert 'id="held-validation-1"' not in html
    assert (
        'id="check-validation"' in html
        and 'Connector validation mail received</strong>\n          <span class="visually-hidden">done:' in html
    )
    # Verifying again, or the periodic task, moves nothing twice.
    verify_domain(domain)
    tend(timezone.now() + timedelta(minutes=5))
    assert Delivery.objects.filter(queue_id=held.queue_id).count() == 1


@pytest.mark.parametrize("address", ["postmaster", "PostMaster@ARCHIVE.archiva.com"])
def test_mail_to_postmaster_is_accepted_and_written_to_the_outbox_never_to_a_tenant(
    ingest, tls_files, org, settings, tmp_path, address
):
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"
    settings.ARCHIVA_POSTMASTER = ""
    raw = b"From: someone@example.org\r\nSubject: Your server\r\n\r\nHello postmaster.\r\n"
    code, reply = send(ingest, tls_files, [address], raw, "someone@example.org")
    assert code == 250, reply
    held = HeldMessage.objects.get(queue_id=queue_id(reply))
    assert held.kind == HeldMessage.Kind.POSTMASTER and held.rcpt_to == [address]
    assert not Delivery.objects.exists()
    assert deliver_held([held.pk]) == 1  # the worker's task, published by the committer
    [eml] = (tmp_path / "outbox").glob("*.eml")
    assert eml.read_bytes().endswith(raw) and b"Return-Path: <someone@example.org>" in eml.read_bytes()
    held.refresh_from_db()
    assert held.released_at is not None
    assert not held_object(settings, held).exists()
    assert deliver_held([held.pk]) == 0  # run twice: delivered once


def test_mail_to_postmaster_goes_to_the_configured_address_through_the_mail_backend(
    ingest, tls_files, org, settings, mailoutbox
):
    settings.ARCHIVA_POSTMASTER = "ops@archiva.example"
    raw = b"From: someone@example.org\r\nSubject: Blocklisted?\r\n\r\nHello.\r\n"
    code, reply = send(ingest, tls_files, [journal_address(org.tenant), "postmaster"], raw, "someone@example.org")
    assert code == 250
    # To a tenant and to postmaster at once: a Delivery for the tenant, a held copy for the operator.
    assert Delivery.objects.get(queue_id=queue_id(reply)).rcpt_to == [journal_address(org.tenant)]
    assert tend(timezone.now() + timedelta(minutes=5))["delivered"] == 1  # left over: the periodic task
    [email] = mailoutbox
    assert email.to == ["ops@archiva.example"] and "someone@example.org" in email.subject
    attached = email.message().get_payload()[1]
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_payload()[0]["Subject"] == "Blocklisted?"


def test_held_validation_mail_is_deleted_after_14_days(ingest, tls_files, org, settings):
    held = send_validation_mail(ingest, tls_files)
    assert tend(timezone.now() + timedelta(days=13))["purged"] == 0
    assert HeldMessage.objects.filter(pk=held.pk).exists()
    assert tend(timezone.now() + timedelta(days=15))["purged"] == 1
    assert not HeldMessage.objects.exists()
    assert not held_object(settings, held).exists()


def test_validation_mail_without_a_sender_is_still_refused(ingest, tls_files):
    from tests.smtp_support import connect

    with connect(ingest, tls_files) as client:
        client.docmd("MAIL FROM:<>")
        code, reply = client.rcpt(current_region().validation_address)
    assert code == 550 and reply.startswith(b"5.7.1")


def test_operators_see_refusals_that_named_no_tenant_and_tenant_admins_never_do(client, org, outsider):
    count_rejections(None, "unknown_recipient", 7)
    count_rejections(outsider.memberships.get().tenant, "too_large", 5)
    client.force_login(org.owner)
    html = client.get(reverse("status-charts")).content.decode()
    assert "chart-untenanted-rejections" not in html and "Unknown journal address" not in html
    assert "Over the size limit" not in html  # Charlie's refusals are never Contoso's
    # Operators are made staff by hand (Django's shell or admin): no product action does it.
    org.admin.is_staff = True
    org.admin.save(update_fields=["is_staff"])
    client.force_login(org.admin)
    html = client.get(reverse("status-charts")).content.decode()
    operators = html[html.index('id="operator-rejections"') :]
    assert "Unknown journal address" in operators and 'data-value="7"' in operators
    assert "Over the size limit" not in html


@pytest.mark.s3
def test_on_s3_held_mail_lives_in_a_bucket_of_no_tenant_and_is_deleted_once_released(
    transactional_db, tls_files, use_s3, settings, dns_server
):
    from botocore.exceptions import ClientError

    from tenants.actions import create_tenant
    from tests.conftest import make_user
    from tests.smtp_support import start_ingest

    owner = make_user("owner@s3org.example")
    tenant = create_tenant("S3 Org", owner)
    domain = add_domain(Membership.objects.get(user=owner), "contoso.com")
    server = start_ingest(tls_files)
    try:
        held = send_validation_mail(server, tls_files)
    finally:
        server.stop_thread()
    s3 = use_s3.client
    assert held_bucket() == f"{settings.ARCHIVA_S3_BUCKET_PREFIX}held" != tenant.bucket
    assert s3.head_object(Bucket=held_bucket(), Key=held.storage_key)["ContentLength"] >= held.size
    assert "Status" not in s3.get_bucket_versioning(Bucket=held_bucket())  # a deleted copy is gone
    dns_server.add_txt(domain.txt_name, domain.txt_value)
    verify_domain(domain)
    delivery = Delivery.objects.get(tenant=tenant, queue_id=held.queue_id)
    assert delivery.read_report() == corpus("10-connector-validation.eml")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=held_bucket(), Key=held.storage_key)


def test_held_mail_is_tended_on_the_beat_schedule():
    """The worker's beat runs `tend` (postmaster leftovers, releases, the 14-day purge)."""
    from archiva.celery import app

    app.finalize()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "ingest.held.tend_held_mail" in scheduled and "archive.tasks.sweep_stranded" in scheduled
    assert "ingest.held.tend_held_mail" in app.tasks


def test_validation_mail_right_after_verification_goes_to_the_tenant_not_on_hold(
    transactional_db, tls_files, org, outsider, dns_server
):
    """The ingest's cache of verified domains lags by seconds; the database decides before mail is held."""
    from ingest.directory import TokenDirectory
    from ingest.server import IngestServer
    from ingest.tls import server_context

    server = IngestServer(
        "127.0.0.1",
        0,
        tls_context=server_context(tls_files.cert, tls_files.key),
        directory=TokenDirectory(refresh_interval=3600),
    ).start_in_thread()
    try:
        verified_domain(dns_server, Membership.objects.get(user=org.owner), "contoso.com")
        code, reply = send(
            server,
            tls_files,
            [current_region().validation_address],
            b"Subject: validation\r\n\r\nx\r\n",
            VALIDATION_SENDER,
        )
    finally:
        server.stop_thread()
    assert code == 250
    assert Delivery.objects.get(queue_id=queue_id(reply)).tenant == org.tenant
    assert not HeldMessage.objects.exists()


def test_a_large_held_validation_mail_is_moved_by_the_worker_not_the_verifying_request(
    ingest, tls_files, org, settings, dns_server
):
    """Anyone may send mail "from" a domain before it is verified: the request that
    verifies it moves only small messages; the periodic task moves the rest."""
    domain = add_contoso(org)
    raw = b"Subject: big\r\n\r\n" + b"x" * 1_100_000 + b"\r\n"  # spooled while it arrived: an object of its own
    code, reply = send(ingest, tls_files, [current_region().validation_address], raw, VALIDATION_SENDER)
    assert code == 250
    held = HeldMessage.objects.get(queue_id=queue_id(reply))
    assert held.storage_key.startswith("raw/") and held_object(settings, held).is_file()
    dns_server.add_txt(domain.txt_name, domain.txt_value)
    verify_domain(domain)
    assert not Delivery.objects.exists()
    assert tend(timezone.now() + timedelta(minutes=5))["released"] == 1
    assert Delivery.objects.get(tenant=org.tenant, queue_id=held.queue_id).read_report() == raw
    assert not held_object(settings, held).exists()


def test_a_peer_sending_much_mail_for_no_tenant_gets_450(transactional_db, tls_files, org):
    from ingest.policy import RateLimiter
    from tests.smtp_support import connect, start_ingest

    server = start_ingest(tls_files, policy={"hold_limiter": RateLimiter(rate=0.001, burst=2)})
    try:
        with connect(server, tls_files) as client:
            client.mail(VALIDATION_SENDER)
            assert client.rcpt("postmaster")[0] == 250
            assert client.rcpt(current_region().validation_address)[0] == 250
            code, reply = client.rcpt("postmaster")
            assert code == 450 and reply.startswith(b"4.7.1"), reply
            assert client.rcpt(journal_address(org.tenant))[0] == 250  # a tenant's mail is not held
    finally:
        server.stop_thread()
