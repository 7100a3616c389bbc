"""/billing/ in a real browser against localstripe: a new owner sees the trial and the
mailbox count of the mail archived, subscribes with a Stripe test card, and after a failed
payment (Stripe's webhook over real HTTP) sees the banner.  Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import time

import pytest
import requests

from billing import access as billing_access
from billing.models import StripeEvent
from tests.archive_support import archive
from tests.conftest import membership_of
from tests.dns_support import verified_domain
from tests.stripe_support import event_about, sign
from tests.test_audit_browser import sign_in
from tests.test_billing import journal

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Bare functions are deprecated"),
]


def test_a_new_owner_sees_the_trial_and_count_then_subscribes_and_sees_a_failed_payment(
    page, shots, org, dns_server, stripe_server, live_server
):
    verified_domain(dns_server, membership_of(org.owner), "contoso.com")
    archive(org.tenant, journal("alice@contoso.com", ["bob@contoso.com"]))
    archive(org.tenant, journal("carol@contoso.com", ["alice@contoso.com", "sam@fabrikam.com"]))
    archive(org.tenant, journal("sam@fabrikam.com", ["bob@contoso.com"]))

    sign_in(page, "alice@contoso.com")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing", exact=True).click()
    assert page.locator("#billing-status").inner_text() == "Trial"
    assert page.locator("#trial-ends").is_visible()
    assert page.locator("#mailbox-count").inner_text() == "3"
    page.click("#mailbox-details summary")
    rows = page.locator("#mailbox-list tbody th")
    assert rows.all_inner_texts() == ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"]
    shots(page, "trial")

    stripe_server.send_webhooks_to(f"{live_server.url}/stripe/webhook")
    page.select_option("#id_interval", "month")
    page.select_option("#id_test_payment_method", "pm_card_visa")
    page.click("#subscribe")
    page.wait_for_load_state()
    assert "Subscribed." in page.locator(".messages").inner_text()
    assert page.locator("#billing-quantity").inner_text().startswith("3")
    shots(page, "subscribed")

    account = billing_access.account(org.tenant)
    listed = stripe_server.call("GET", f"/v1/subscriptions?customer={account.stripe_customer_id}")["data"]
    assert [(s["id"], s["quantity"], s["plan"]["id"]) for s in listed] == [
        (account.stripe_subscription_id, 3, "archiva-us-mailbox-month")
    ]

    # localstripe itself posts the subscription's events, signed; the server verifies and records them.
    deadline = time.monotonic() + 15
    while not StripeEvent.objects.filter(tenant=org.tenant, type="customer.subscription.created").exists():
        assert time.monotonic() < deadline, "localstripe's webhook did not arrive"
        time.sleep(0.2)

    # Stripe reports a failed payment to the running server.
    invoice = {
        "object": "invoice",
        "id": "in_browser",
        "customer": account.stripe_customer_id,
        "subscription": account.stripe_subscription_id,
        "amount_paid": 0,
    }
    payload = json.dumps(event_about(invoice, "invoice.payment_failed")).encode()
    answer = requests.post(
        f"{live_server.url}/stripe/webhook",
        data=payload,
        timeout=10,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload)},
    )
    assert answer.status_code == 200, answer.text
    page.goto("/status/")
    assert "A payment failed" in page.locator("#billing-banner").inner_text()
    shots(page, "past-due-banner")
    assert page.console_errors == []
