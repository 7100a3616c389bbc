"""Billing per mailbox against a real Stripe-compatible server (localstripe on loopback).

The story of issue 22: a tenant starts in its trial; the owner subscribes
with a payment method Stripe made (a Stripe test payment method here); the
subscription's quantity follows the mailboxes that sent or received mail in
the last 30 days; a failed payment (Stripe's webhook) brings a banner and
mail, never a refused journal report; a payment brings it back.  Webhooks
are verified and handled once.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from email.utils import format_datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import access as billing_access
from billing.mailboxes import active_mailboxes, count
from billing.models import BillingAccount, BillingStatus, StripeEvent
from billing.standing import Access, standing_of
from billing.tasks import sync_billing
from ingest.models import Delivery
from m365.access import connection as m365_connection
from m365.directory import DirectoryUser, store_mailboxes
from m365.models import MailboxKind
from tenants.actions import create_tenant
from tenants.api_tokens import create_api_token
from tenants.models import AuditEvent
from tests.archive_support import archive, process
from tests.conftest import create_tenant_in, make_user
from tests.dns_support import verified_domain
from tests.smtp_support import journal_address, send
from tests.stripe_support import deliver_events, event_about, post_event, sign

# localstripe registers plain functions as aiohttp handlers, which aiohttp deprecates: not ours to fix.
pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:Bare functions are deprecated")]


def journal(sender: str, recipients: list[str], when: dt.datetime | None = None, subject: str = "Hello") -> bytes:
    """An Exchange envelope journal report of a message sent `when` (default now)."""
    date = format_datetime(when or timezone.now())
    mid = f"<{uuid.uuid4().hex}@contoso.com>"
    envelope = "\r\n".join(f"To: {r}" for r in recipients)
    original = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: {mid}\r\nContent-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\nHi.\r\n"
    )
    return (
        f"From: {sender}\r\nTo: journal@archive.archiva.com\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@journal.report.generator>\r\nX-MS-Journal-Report:\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\nMIME-Version: 1.0\r\n\r\n'
        "--b0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"Sender: {sender}\r\nSubject: {subject}\r\nMessage-Id: {mid}\r\n{envelope}\r\n"
        f"--b0\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--b0--\r\n"
    ).encode()


def owner_membership(org):
    from tenants.access import membership_for

    return membership_for(org.owner)


def subscription(stripe_server, account: BillingAccount) -> dict:
    return stripe_server.call("GET", f"/v1/subscriptions/{account.stripe_subscription_id}")


def end_trial(tenant, days_ago: int = 1) -> None:
    """Time-shift: the trial ended `days_ago` days ago (the trial is counted from the tenant's creation)."""
    billing_access.account(tenant)
    BillingAccount.objects.filter(tenant=tenant).update(trial_ends=timezone.now() - dt.timedelta(days=days_ago))


def subscribe(client, method: str = "pm_card_visa", interval: str = "month"):
    return client.post(reverse("billing-subscribe"), {"interval": interval, "test_payment_method": method}, follow=True)


def set_default_card(stripe_server, customer: str, method: str) -> None:
    """The customer's card changes at Stripe (expired, replaced), as the customer would do it there."""
    attached = stripe_server.call("POST", f"/v1/payment_methods/{method}/attach", customer=customer)
    stripe_server.call(
        "POST", f"/v1/customers/{customer}", **{"invoice_settings[default_payment_method]": attached["id"]}
    )


def renewal_invoice(stripe_server, account: BillingAccount, cents: int = 900) -> dict:
    """The next period's invoice, as Stripe makes it at renewal, and its payment attempt."""
    customer = account.stripe_customer_id
    stripe_server.call(
        "POST", "/v1/invoiceitems", customer=customer, amount=str(cents), currency="usd", description="Renewal"
    )
    invoice = stripe_server.call("POST", "/v1/invoices", customer=customer, subscription=account.stripe_subscription_id)
    return stripe_server.call("POST", f"/v1/invoices/{invoice['id']}/pay")


# --- billing off ------------------------------------------------------------------------------


def test_without_a_stripe_key_billing_is_off_and_everything_is_free(client, org, settings):
    settings.STRIPE_SECRET_KEY = ""
    client.force_login(org.owner)
    html = client.get(reverse("billing")).content.decode()
    assert 'id="billing-off"' in html and "free of charge" in html
    assert client.get(reverse("api-billing")).json() == {
        "plan": None,
        "status": "free",
        "trial_ends": None,
        "mailboxes": 0,
        "next_invoice": None,
        "access": "full",
    }
    assert "billing-banner" not in client.get(reverse("status")).content.decode()
    assert client.post("/stripe/webhook", data=b"{}", content_type="application/json").status_code == 404


# --- plans, trial, mailbox count --------------------------------------------------------------


def test_a_new_tenant_starts_a_30_day_trial_on_its_regions_plan_and_currency(org, stripe_server):
    account = billing_access.account(org.tenant)
    assert account.status == BillingStatus.TRIAL
    assert account.trial_ends == org.tenant.created_at + dt.timedelta(days=30)
    assert (account.plan.region, account.plan.currency, account.plan.interval) == ("us", "usd", "month")
    assert account.plan.price == "$3.00"
    eu = create_tenant_in("eu", "Contoso GmbH", make_user("anna@contoso.de"))
    assert (billing_access.account(eu).plan.currency, billing_access.account(eu).plan.price) == ("eur", "3.00 €")
    assert {p.interval for p in billing_access.plans("eu")} == {"month", "year"}


def test_the_count_is_internal_mailboxes_with_mail_in_the_last_30_days(org, dns_server, stripe_server):
    verified_domain(dns_server, owner_membership(org), "contoso.com")
    now = timezone.now()
    archive(org.tenant, journal("alice@contoso.com", ["bob@contoso.com", "sam@fabrikam.com"]))
    archive(org.tenant, journal("sam@fabrikam.com", ["Carol@Contoso.com"], now - dt.timedelta(days=3)))
    archive(org.tenant, journal("old@contoso.com", ["older@contoso.com"], now - dt.timedelta(days=45)))
    counted = count(org.tenant, now)
    assert counted.source == "domains"
    assert {(m.address, m.sent, m.received) for m in counted.mailboxes} == {
        ("alice@contoso.com", 1, 0),
        ("bob@contoso.com", 0, 1),
        ("carol@contoso.com", 0, 1),
    }
    # An unverified domain's addresses are not the tenant's mailboxes.
    other = create_tenant("Woodgrove", make_user("wendy@woodgrove.com"))
    archive(other, journal("wendy@woodgrove.com", ["x@woodgrove.com"]))
    assert active_mailboxes(other, now) == []


def test_with_microsoft_365_only_user_mailboxes_count_under_their_primary_address(org, dns_server, stripe_server):
    verified_domain(dns_server, owner_membership(org), "contoso.com")
    users = [
        DirectoryUser("1", "alice@contoso.com", "Alice", ["alice@contoso.com", "a.smith@contoso.com"], True, False),
        DirectoryUser("2", "info@contoso.com", "Info", ["info@contoso.com"], True, False, kind=MailboxKind.SHARED),
        DirectoryUser("3", "room1@contoso.com", "Room 1", ["room1@contoso.com"], True, False, kind=MailboxKind.ROOM),
        DirectoryUser("4", "bob@contoso.com", "Bob", ["bob@contoso.com"], True, False),
    ]
    store_mailboxes(m365_connection(org.tenant), users, timezone.now())
    archive(org.tenant, journal("a.smith@contoso.com", ["info@contoso.com", "room1@contoso.com", "zed@contoso.com"]))
    archive(org.tenant, journal("alice@contoso.com", ["sam@fabrikam.com"]))
    counted = count(org.tenant, timezone.now())
    assert counted.source == "microsoft365"
    # Shared and room mailboxes are not billed; zed@ is in the domain but not a mailbox Graph lists; bob sent nothing.
    assert [(m.address, m.sent) for m in counted.mailboxes] == [("alice@contoso.com", 2)]


# --- the whole story --------------------------------------------------------------------------


def test_trial_subscribe_quantity_payment_failure_and_payment(
    client, org, ingest, tls_files, dns_server, stripe_server, mailoutbox
):
    """Trial, subscription at the mailbox count, the count growing with new mail, a failed
    payment that changes everything but the archive's intake, and the payment that ends it."""
    verified_domain(dns_server, owner_membership(org), "contoso.com")
    archive(org.tenant, journal("alice@contoso.com", ["bob@contoso.com"]))
    client.force_login(org.owner)

    html = client.get(reverse("billing")).content.decode()
    assert 'id="billing-status">Trial' in html and 'id="trial-ends"' in html
    assert 'id="mailbox-count">2<' in html and "bob@contoso.com" in html

    end_trial(org.tenant)
    assert "Your trial has ended" in client.get(reverse("status")).content.decode()  # the banner, in its grace

    html = subscribe(client).content.decode()
    assert "Subscribed." in html
    account = billing_access.account(org.tenant)
    sub = subscription(stripe_server, account)
    assert sub["status"] == "active" and sub["quantity"] == 2 and sub["plan"]["id"] == "archiva-us-mailbox-month"
    assert account.status == BillingStatus.ACTIVE and account.quantity == 2
    assert "invoice.payment_succeeded" in deliver_events(client, stripe_server)
    assert "billing-banner" not in client.get(reverse("status")).content.decode()

    # New mail from a third mailbox arrives over SMTP; the daily sync follows the count.
    code, reply = send(
        ingest, tls_files, [journal_address(org.tenant)], journal("carol@contoso.com", ["alice@contoso.com"])
    )
    assert code == 250
    process(Delivery.objects.get(queue_id=reply.decode().split()[1]).pk)
    assert sync_billing() == 2  # Contoso and Fabrikam
    account.refresh_from_db()
    assert account.quantity == 3 and subscription(stripe_server, account)["quantity"] == 3
    assert AuditEvent.objects.filter(tenant=org.tenant, action=AuditEvent.Action.BILLING_QUANTITY_CHANGED).exists()
    api = client.get(reverse("api-billing")).json()
    assert (api["status"], api["mailboxes"], api["plan"]["code"]) == ("active", 3, "archiva-us-mailbox-month")
    assert api["next_invoice"]["currency"] == "usd"

    # The card stops working; the renewal's payment fails and Stripe says so.
    set_default_card(stripe_server, account.stripe_customer_id, "pm_card_chargeCustomerFail")
    invoice = renewal_invoice(stripe_server, account)
    assert invoice["status"] == "open"
    failed = stripe_server.call("GET", f"/v1/payment_intents/{invoice['payment_intent']}")
    assert failed["status"] == "requires_payment_method" and failed["last_payment_error"]["code"] == "card_declined"
    deliver_events(client, stripe_server)
    # localstripe drops this failure when an invoice is paid; Stripe sends the event.
    assert post_event(client, event_about(invoice, "invoice.payment_failed")).status_code == 200
    account.refresh_from_db()
    assert account.status == BillingStatus.PAST_DUE and account.past_due_since is not None
    assert [m.subject for m in mailoutbox] == ["Archiva: a payment failed"]
    assert set(mailoutbox[0].to) >= {
        "alice@contoso.com",
        "bob@contoso.com",
    }  # the billing email (owner's) and the admin
    client.force_login(org.admin)
    assert "A payment failed" in client.get(reverse("status")).content.decode()
    client.force_login(org.user)
    assert "billing-banner" not in client.get(reverse("search")).content.decode()  # admins only

    # Past due: journal reports are accepted and archived all the same.
    code, reply = send(
        ingest, tls_files, [journal_address(org.tenant)], journal("dan@contoso.com", ["bob@contoso.com"])
    )
    assert code == 250 and reply.startswith(b"2.0.0")
    assert process(Delivery.objects.get(queue_id=reply.decode().split()[1]).pk) == Delivery.Status.ARCHIVED

    # The customer pays the open invoice with a working card.
    set_default_card(stripe_server, account.stripe_customer_id, "pm_card_visa")
    assert stripe_server.call("POST", f"/v1/invoices/{invoice['id']}/pay")["status"] == "paid"
    assert "invoice.payment_succeeded" in deliver_events(client, stripe_server)
    account.refresh_from_db()
    assert account.status == BillingStatus.ACTIVE and account.past_due_since is None
    client.force_login(org.owner)
    assert "billing-banner" not in client.get(reverse("status")).content.decode()
    statuses = AuditEvent.objects.filter(tenant=org.tenant, action=AuditEvent.Action.BILLING_STATUS_CHANGED)
    assert [(e.detail["from"], e.detail["to"]) for e in statuses.order_by("id")] == [
        ("active", "past_due"),
        ("past_due", "active"),
    ]


# --- webhooks ---------------------------------------------------------------------------------


def subscribed(client, org, stripe_server) -> BillingAccount:
    end_trial(org.tenant)
    client.force_login(org.owner)
    assert "Subscribed." in subscribe(client).content.decode()
    deliver_events(client, stripe_server)
    return billing_access.account(org.tenant)


def failed_payment_event(account: BillingAccount, event_id: str = "evt_test_failed") -> dict:
    return {
        "id": event_id,
        "object": "event",
        "type": "invoice.payment_failed",
        "data": {
            "object": {
                "object": "invoice",
                "id": "in_x",
                "customer": account.stripe_customer_id,
                "subscription": account.stripe_subscription_id,
                "amount_paid": 0,
            }
        },
    }


def test_a_replayed_event_changes_nothing(client, org, stripe_server, mailoutbox):
    account = subscribed(client, org, stripe_server)
    event = failed_payment_event(account)
    assert post_event(client, event).json()["message"] == "payment failed: past due"
    paid = {**event, "id": "evt_test_paid", "type": "invoice.paid"}
    paid["data"] = {"object": {**event["data"]["object"], "amount_paid": 900}}
    assert post_event(client, paid).status_code == 200
    assert billing_access.account(org.tenant).status == BillingStatus.ACTIVE

    replay = post_event(client, event)  # signed afresh, as Stripe retries
    assert replay.status_code == 200 and "already handled" in replay.json()["message"]
    assert billing_access.account(org.tenant).status == BillingStatus.ACTIVE
    assert StripeEvent.objects.filter(event_id="evt_test_failed").count() == 1
    assert len(mailoutbox) == 1


def test_badly_signed_and_stale_webhooks_are_refused(client, org, stripe_server):
    account = subscribed(client, org, stripe_server)
    payload = json.dumps(failed_payment_event(account)).encode()
    wrong = client.post(
        "/stripe/webhook",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload, "whsec_not_ours"),
    )
    assert wrong.status_code == 400 and wrong.json()["message"] == "bad signature"
    unsigned = client.post("/stripe/webhook", data=payload, content_type="application/json")
    assert unsigned.status_code == 400
    # A captured request sent again an hour later: the signature's time is too old.
    stale = client.post(
        "/stripe/webhook",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload, timestamp=int(timezone.now().timestamp()) - 3600),
    )
    assert stale.status_code == 400
    tampered = payload.replace(b"in_x", b"in_y")
    forged = client.post(
        "/stripe/webhook", data=tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(payload)
    )
    assert forged.status_code == 400
    assert billing_access.account(org.tenant).status == BillingStatus.ACTIVE
    assert not StripeEvent.objects.filter(event_id="evt_test_failed").exists()


def test_an_event_of_an_unknown_customer_is_recorded_and_ignored(client, org, stripe_server):
    event = {
        "id": "evt_other",
        "type": "invoice.payment_failed",
        "data": {"object": {"object": "invoice", "customer": "cus_nobody"}},
    }
    response = post_event(client, event)
    assert response.status_code == 200 and "no billing account" in response.json()["message"]


# --- cancel, resume, read-only, closed --------------------------------------------------------


def test_cancel_resume_and_the_read_only_then_closed_archive(client, org, outsider, stripe_server):
    account = subscribed(client, org, stripe_server)
    assert "Canceled at the end" in client.post(reverse("billing-cancel"), follow=True).content.decode()
    assert subscription(stripe_server, account)["cancel_at_period_end"] is True
    assert "Subscription resumed." in client.post(reverse("billing-resume"), follow=True).content.decode()
    assert subscription(stripe_server, account)["cancel_at_period_end"] is False

    # Stripe ends the subscription (at the period's end after a cancellation).
    client.post(reverse("billing-cancel"))
    stripe_server.call("DELETE", f"/v1/subscriptions/{account.stripe_subscription_id}")
    assert "customer.subscription.deleted" in deliver_events(client, stripe_server)
    account.refresh_from_db()
    assert account.status == BillingStatus.CANCELED
    assert standing_of(account, timezone.now()).access == Access.READ_ONLY

    # Read-only: search and export still work, other changes are refused.
    assert client.get(reverse("search")).status_code == 200
    refused = client.post(reverse("team"), {"email": "new@contoso.com", "role": "user"}, follow=True)
    assert refused.redirect_chain[-1][0] == reverse("billing") and "read-only" in refused.content.decode()
    api = client.post("/api/v1/holds", data={"name": "x"}, content_type="application/json")
    assert api.status_code == 402
    assert (
        client.post(
            reverse("api-exports"), data={"q": "", "format": "mbox"}, content_type="application/json"
        ).status_code
        != 402
    )
    # Taking access away is never refused: a leaked journal address can be rotated.
    rotated = client.post(reverse("rotate-token"), follow=True)
    assert (
        rotated.redirect_chain[-1][0] == reverse("status") and "New journal address issued" in rotated.content.decode()
    )
    # Another tenant is not affected.
    client.force_login(outsider)
    assert client.post(reverse("team"), {"email": "x@fabrikam.com", "role": "user"}).status_code != 402

    # 30 days later: closed, search and export refused; billing still open to resume.
    BillingAccount.objects.filter(pk=account.pk).update(
        canceled_at=timezone.now() - dt.timedelta(days=31)
    )  # time-shift
    client.force_login(org.owner)
    assert client.get(reverse("search")).url == reverse("billing")
    assert client.get(reverse("api-messages")).status_code == 402
    assert client.get(reverse("billing")).status_code == 200
    client.force_login(org.user)  # a plain user is told why, not sent to a page they may not open
    closed = client.get(reverse("search"))
    assert closed.status_code == 402 and "The archive is closed" in closed.content.decode()
    client.force_login(org.owner)
    assert "Subscription resumed." in client.post(reverse("billing-resume"), follow=True).content.decode()
    account.refresh_from_db()
    assert account.status == BillingStatus.ACTIVE and account.stripe_subscription_id
    assert subscription(stripe_server, account)["status"] == "active"
    assert client.get(reverse("search")).status_code == 200
    actions = AuditEvent.objects.filter(tenant=org.tenant, action__startswith="billing-").values_list(
        "action", flat=True
    )
    assert {"billing-subscribed", "billing-canceled", "billing-resumed", "billing-status"} <= set(actions)


def test_after_the_grace_period_the_archive_is_read_only_and_the_admins_are_told_once(
    client, org, stripe_server, mailoutbox
):
    account = subscribed(client, org, stripe_server)
    post_event(client, failed_payment_event(account))
    assert standing_of(billing_access.account(org.tenant), timezone.now()).access == Access.FULL  # in its grace
    BillingAccount.objects.filter(pk=account.pk).update(
        past_due_since=timezone.now() - dt.timedelta(days=15)
    )  # time-shift
    mailoutbox.clear()
    sync_billing()
    sync_billing()
    assert [m.subject for m in mailoutbox] == ["Archiva: your archive is read-only"]
    assert client.post("/api/v1/holds", data={"name": "x"}, content_type="application/json").status_code == 402
    assert client.get(reverse("api-messages")).status_code == 200
    _token, secret = create_api_token(owner_membership(org), "script")
    client.logout()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    refused = client.post("/api/v1/holds", data={"name": "x"}, content_type="application/json", **bearer)
    assert refused.status_code == 402 and "read-only" in refused.json()["error"]
    assert client.get(reverse("api-messages"), **bearer).status_code == 200
    client.force_login(org.owner)
    assert "read-only" in client.get(reverse("status")).content.decode()


# --- roles, API, billing email ----------------------------------------------------------------


def test_only_owners_and_admins_see_billing_and_only_owners_change_it(client, org, outsider, stripe_server):
    for user, page, api in (
        (org.owner, 200, 200),
        (org.admin, 200, 200),
        (org.auditor, 403, 403),
        (org.user, 403, 403),
    ):
        client.force_login(user)
        assert client.get(reverse("billing")).status_code == page, user.email
        assert client.get(reverse("api-billing")).status_code == api, user.email
    client.logout()
    assert client.get(reverse("api-billing")).status_code == 401
    client.force_login(org.admin)
    assert (
        client.post(
            reverse("billing-subscribe"), {"interval": "month", "test_payment_method": "pm_card_visa"}
        ).status_code
        == 403
    )
    assert client.post(reverse("billing-email"), {"email": "ap@contoso.com"}).status_code == 403
    assert not billing_access.account(org.tenant).stripe_subscription_id
    client.force_login(outsider)
    assert client.get(reverse("api-billing")).json()["status"] == "trial"  # its own tenant's


def test_the_api_answers_plan_status_trial_mailboxes_and_next_invoice(client, org, stripe_server):
    client.force_login(org.admin)
    body = client.get(reverse("api-billing")).json()
    assert {"plan", "status", "trial_ends", "mailboxes", "next_invoice"} <= set(body)
    assert body["status"] == "trial" and body["next_invoice"] is None and body["mailboxes"] == 0
    assert body["trial_ends"] == billing_access.account(org.tenant).trial_ends.isoformat()
    assert body["plan"]["unit_amount"] == 300


def test_the_billing_email_goes_to_stripe_and_to_the_audit_log(client, org, stripe_server):
    account = subscribed(client, org, stripe_server)
    bad = client.post(reverse("billing-email"), {"email": "not an address"}, follow=True).content.decode()
    assert "is not an email address" in bad
    html = client.post(reverse("billing-email"), {"email": "AP@Contoso.com"}, follow=True).content.decode()
    assert "Invoices now go to ap@contoso.com." in html
    assert stripe_server.call("GET", f"/v1/customers/{account.stripe_customer_id}")["email"] == "ap@contoso.com"
    event = AuditEvent.objects.get(tenant=org.tenant, action=AuditEvent.Action.BILLING_EMAIL_CHANGED)
    assert event.detail == {"from": "alice@contoso.com", "to": "ap@contoso.com"}


def test_a_declined_card_is_refused_with_a_message_and_no_subscription(client, org, stripe_server):
    client.force_login(org.owner)
    html = subscribe(client, "pm_card_visa_chargeDeclined").content.decode()
    assert "declined" in html
    account = billing_access.account(org.tenant)
    assert not account.stripe_subscription_id and account.stripe_customer_id  # the customer is kept for the next try
    assert (
        client.post(
            reverse("billing-subscribe"), {"interval": "week", "test_payment_method": "pm_card_visa"}, follow=True
        ).status_code
        == 200
    )
    assert not billing_access.account(org.tenant).stripe_subscription_id


def test_subscribing_in_the_trial_keeps_the_rest_of_it_free(client, org, stripe_server):
    client.force_login(org.owner)
    assert "Subscribed." in subscribe(client, interval="year").content.decode()
    account = billing_access.account(org.tenant)
    sub = subscription(stripe_server, account)
    assert sub["trial_end"] == int(account.trial_ends.timestamp())
    assert sub["plan"]["id"] == "archiva-us-mailbox-year" and sub["quantity"] == 1  # no mail yet: at least one
    assert account.status == BillingStatus.TRIAL
    assert stripe_server.call("GET", f"/v1/invoices?customer={account.stripe_customer_id}")["data"] == []
    assert "already has a subscription" in subscribe(client).content.decode()


def test_journal_reports_are_accepted_read_only_and_closed_alike(org, ingest, tls_files, dns_server, stripe_server):
    """Never lose mail for money: past the grace and 30 days after a cancellation, still 250 and archived."""
    verified_domain(dns_server, owner_membership(org), "contoso.com")
    account = billing_access.account(org.tenant)
    now = timezone.now()
    shifts = [  # time-shifts: the states a failed payment and an ended subscription reach after days
        {"status": BillingStatus.PAST_DUE, "past_due_since": now - dt.timedelta(days=20)},
        {"status": BillingStatus.CANCELED, "canceled_at": now - dt.timedelta(days=40)},
    ]
    for shift, access in zip(shifts, (Access.READ_ONLY, Access.CLOSED), strict=True):
        BillingAccount.objects.filter(pk=account.pk).update(**shift)
        account.refresh_from_db()
        assert standing_of(account, timezone.now()).access == access
        raw = journal("alice@contoso.com", ["bob@contoso.com"], subject=f"while {access}")
        code, reply = send(ingest, tls_files, [journal_address(org.tenant)], raw)
        assert code == 250 and reply.startswith(b"2.0.0")
        delivery = Delivery.objects.get(queue_id=reply.decode().split()[1])
        assert process(delivery.pk) == Delivery.Status.ARCHIVED


def test_a_subscription_update_from_stripe_is_taken_and_audited(client, org, stripe_server):
    account = subscribed(client, org, stripe_server)
    sub = stripe_server.call("POST", f"/v1/subscriptions/{account.stripe_subscription_id}", cancel_at_period_end="true")
    assert post_event(client, event_about(sub, "customer.subscription.updated")).status_code == 200
    account.refresh_from_db()
    assert account.cancel_at_period_end and account.status == BillingStatus.ACTIVE
    assert "Your subscription ends on" in client.get(reverse("status")).content.decode()
    # Stripe gave up retrying a payment: the subscription is unpaid.
    unpaid = {**sub, "status": "unpaid", "cancel_at_period_end": False}
    post_event(client, event_about(unpaid, "customer.subscription.updated"))
    account.refresh_from_db()
    assert account.status == BillingStatus.PAST_DUE and account.past_due_since is not None
    change = AuditEvent.objects.get(tenant=org.tenant, action=AuditEvent.Action.BILLING_STATUS_CHANGED)
    assert change.detail == {"from": "active", "to": "past_due", "why": "customer.subscription.updated"}
