"""With billing on, a request asks for its member and its tenant's billing
account in several places: the MFA check, the billing gate, the view and the
admins' banner.  Each is looked up once and kept on the request."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import Http404
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing import access as billing_access
from billing.models import BillingAccount
from tenants import access
from tenants.api_tokens import create_api_token
from tests.conftest import make_user, membership_of

# localstripe registers plain functions as aiohttp handlers, which aiohttp deprecates: not ours to fix.
pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:Bare functions are deprecated")]


def queries_from(captured: CaptureQueriesContext, table: str) -> int:
    """How many of the captured queries read `table` (as their FROM, not through a join)."""
    return sum(f'FROM "{table}"' in query["sql"] for query in captured.captured_queries)


def lookups_of(client, path: str, **headers) -> tuple[int, CaptureQueriesContext]:
    with CaptureQueriesContext(connection) as captured:
        status = client.get(path, **headers).status_code
    return status, captured


def test_an_admins_page_looks_up_the_member_and_the_billing_account_once(client, org, stripe_server):
    """alice's System Status after her trial: the MFA check, the gate, the view and the banner share one of each."""
    billing_access.account(org.tenant)
    BillingAccount.objects.filter(tenant=org.tenant).update(trial_ends=timezone.now() - dt.timedelta(days=1))
    client.force_login(org.owner)
    with CaptureQueriesContext(connection) as captured:
        page = client.get(reverse("status"))
    assert page.status_code == 200 and "Your trial has ended" in page.content.decode()  # the banner asked too
    assert queries_from(captured, "tenants_membership") == 1
    assert queries_from(captured, "billing_billingaccount") == 1


def test_the_billing_page_looks_up_the_member_and_the_billing_account_once(client, org, stripe_server):
    client.force_login(org.owner)
    status, captured = lookups_of(client, reverse("billing"))
    assert status == 200
    assert queries_from(captured, "tenants_membership") == 1
    assert queries_from(captured, "billing_billingaccount") == 1


def test_an_api_token_is_looked_up_once_by_the_gate_and_the_view(client, org, stripe_server):
    _token, secret = create_api_token(membership_of(org.owner), "script")
    status, captured = lookups_of(client, "/api/v1/billing", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert status == 200
    assert queries_from(captured, "archive_apitoken") == 1
    assert queries_from(captured, "tenants_membership") == 1
    assert queries_from(captured, "billing_billingaccount") == 1


def test_the_kept_membership_follows_the_requests_user(org):
    """A sign-in during the request (request.user changes) looks again, and nobody's is None."""
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    assert access.request_membership(request) is None
    request.user = org.owner
    assert access.request_membership(request) == membership_of(org.owner)
    request.user = org.admin
    assert access.request_membership(request) == membership_of(org.admin)
    request.user = make_user("nobody@example.org")
    assert access.request_membership(request) is None
    with pytest.raises(Http404):
        access.request_member(request)
