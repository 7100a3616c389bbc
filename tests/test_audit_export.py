"""Reading the audit log with filters (who, what, when): the `/audit/` page and
`GET /api/v1/audit` as JSON or, with `Accept: text/csv`, a streamed CSV.
Owners, admins and auditors only; a plain user gets 403; charlie, the
outsider, reads only his own tenant's log."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.urls import reverse

from tenants import audit
from tenants.actions import add_domain
from tenants.api_tokens import create_api_token
from tenants.models import AuditEvent
from tests.conftest import membership_of

Action = AuditEvent.Action
MARCH = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def log(org, outsider):
    """Contoso's log: bob searched on 10 and 11 March, dave viewed on 12 March, bob added a domain on the 13th."""
    bob, dave = membership_of(org.admin), membership_of(org.auditor)
    written = [
        audit.record_event(bob, Action.SEARCH, {"query": "budget", "page": 1, "count": 3}, ip="198.51.100.1"),
        audit.record_event(bob, Action.SEARCH, {"query": 'subject:"a, b"', "page": 1, "count": 0}, ip="198.51.100.1"),
        audit.record_event(dave, Action.VIEW, {"message": 42}, ip="198.51.100.2"),
    ]
    add_domain(bob, "contoso.com", ip="198.51.100.1")
    written.append(AuditEvent.objects.filter(tenant=org.tenant).order_by("pk").last())
    for event, days in zip(written, range(4), strict=True):
        # Time-shift (the log takes no clock); this breaks the hash chain, which these tests do not check.
        AuditEvent.objects.filter(pk=event.pk).update(created_at=MARCH + dt.timedelta(days=days))
    add_domain(membership_of(outsider), "fabrikam.com", ip="203.0.113.5")
    return written


def rows(response) -> list[dict[str, str]]:
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def only_march(items, key):
    return [item for item in items if item[key].startswith("2026-03")]


def test_json_filters_by_action_actor_and_time(client, org, log):
    client.force_login(org.auditor)
    searches = client.get("/api/v1/audit", {"action": "search"}).json()["results"]
    assert [e["id"] for e in searches] == [log[0].pk, log[1].pk]  # oldest first
    assert searches[0]["actor"] == "bob@contoso.com" and searches[0]["detail"]["query"] == "budget"
    assert searches[0]["ip"] == "198.51.100.1" and len(searches[0]["hash"]) == 64

    by_dave = client.get("/api/v1/audit", {"actor": "DAVE@contoso.com"}).json()["results"]
    assert [e["id"] for e in only_march(by_dave, "time")] == [log[2].pk]
    assert {e["action"] for e in by_dave} == {"view", "invitation-accepted"}  # and joining, today
    window = client.get("/api/v1/audit", {"since": "2026-03-11", "until": "2026-03-12"}).json()["results"]
    assert [e["id"] for e in window] == [log[1].pk, log[2].pk]  # `until` is a whole day
    since = client.get("/api/v1/audit", {"since": "2026-03-12T12:00:00Z"}).json()["results"]
    assert [e["id"] for e in only_march(since, "time")] == [log[2].pk, log[3].pk]
    assert "fabrikam.com" not in json.dumps(client.get("/api/v1/audit").json())


def test_json_pages_continue_after_the_last_id(client, org, log):
    client.force_login(org.admin)
    first = client.get("/api/v1/audit", {"since": "2026-03-01", "until": "2026-03-31", "limit": 3}).json()
    assert [e["id"] for e in first["results"]] == [e.pk for e in log[:3]]
    second = client.get(first["next"]).json()
    assert [e["id"] for e in second["results"]] == [log[3].pk] and second["next"] is None


def test_csv_streams_every_matching_event_and_is_itself_audited(client, org, log):
    client.force_login(org.auditor)
    response = client.get("/api/v1/audit", {"until": "2026-03-31"}, HTTP_ACCEPT="text/csv")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    got = rows(response)
    assert [int(r["id"]) for r in got] == [e.pk for e in log]
    assert list(got[0]) == ["id", "time", "actor", "api_token", "action", "target", "detail", "ip", "prev_hash", "hash"]
    assert json.loads(got[1]["detail"])["query"] == 'subject:"a, b"'  # quoted, comma and all
    assert got[3]["action"] == "domain-added" and got[3]["target"] == "contoso.com"
    assert got[1]["prev_hash"] == got[0]["hash"]  # a recipient can check the links offline
    exported = AuditEvent.objects.filter(tenant=org.tenant).last()
    assert (exported.action, exported.actor_email, exported.detail) == (
        Action.AUDIT_EXPORTED, "dave@contoso.com", {"format": "csv", "filters": {"until": "2026-04-01T00:00:00+00:00"}},
    )  # fmt: skip


def test_csv_filtered_by_action_through_a_bearer_token(client, org, log):
    _, secret = create_api_token(membership_of(org.owner), "auditor export")
    response = client.get(
        "/api/v1/audit?action=view", HTTP_ACCEPT="text/csv;q=0.9, */*;q=0.1", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert [(r["actor"], r["action"], json.loads(r["detail"])) for r in rows(response)] == [
        ("dave@contoso.com", "view", {"message": 42})
    ]
    exported = AuditEvent.objects.filter(tenant=org.tenant).last()
    assert exported.token.name == "auditor export"
    assert exported.token_label == f"auditor export ({exported.token.prefix}…)"
    client.force_login(org.auditor)
    listed = client.get("/api/v1/audit", {"action": "audit-exported"}).json()["results"]
    assert listed[0]["api_token"] == exported.token_label


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "last week"}, "since: 'last week' is not a date"),
        ({"until": "2026-02-30"}, "until: '2026-02-30' is not a date"),
        ({"action": "hack"}, "action: 'hack' is not one of"),
        ({"limit": "0"}, "limit: between 1 and 5000"),
        ({"after": "x"}, "after: 'x' is not an event id"),
    ],
)
def test_bad_filters_get_400_naming_the_parameter(client, org, params, message):
    client.force_login(org.admin)
    response = client.get("/api/v1/audit", params)
    assert response.status_code == 400 and message in response.json()["error"]


def test_plain_users_get_403_and_the_outsider_only_his_own(client, org, outsider, log):
    client.force_login(org.user)
    assert client.get("/api/v1/audit").status_code == 403
    assert client.get("/api/v1/audit", HTTP_ACCEPT="text/csv").status_code == 403
    assert client.get(reverse("audit")).status_code == 403
    client.force_login(outsider)
    text = b"".join(client.get("/api/v1/audit", HTTP_ACCEPT="text/csv").streaming_content).decode()
    assert "fabrikam.com" in text and "contoso" not in text
    assert client.get("/api/v1/audit").status_code == 200
    client.logout()
    assert client.get("/api/v1/audit").status_code == 401


def page_rows(client, **params) -> str:
    response = client.get(reverse("audit"), params)
    assert response.status_code == 200
    html = response.content.decode()
    return html.split('id="audit-events">', 1)[1].split("</tbody>", 1)[0] if 'id="audit-events"' in html else ""


def test_the_page_filters_by_who_what_and_when_and_links_the_csv(client, org, log):
    client.force_login(org.auditor)
    searches = page_rows(client, action="search")
    assert "budget" in searches and "message 42" not in searches and 'audit-target">contoso.com<' not in searches
    assert 'audit-target">contoso.com<' in page_rows(client, action="domain-added")
    by_dave = page_rows(client, actor="dave@contoso.com")
    assert "message 42" in by_dave and "budget" not in by_dave
    window = page_rows(client, since="2026-03-12", until="2026-03-12")
    assert "message 42" in window and "budget" not in window
    html = client.get(reverse("audit"), {"action": "view"}).content.decode()
    assert 'href="/api/v1/audit?action=view&amp;format=csv"' in html
    assert '<option value="view" selected>' in html and '<option value="bob@contoso.com">' in html
    assert "No event matches these filters." in client.get(reverse("audit"), {"actor": "x@y.z"}).content.decode()


def test_the_page_answers_a_bad_date_with_400_and_why(client, org):
    client.force_login(org.admin)
    response = client.get(reverse("audit"), {"since": "yesterday"})
    assert response.status_code == 400
    assert "since: &#x27;yesterday&#x27; is not a date" in response.content.decode()


def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted(client, org):
    create_api_token(membership_of(org.owner), '=HYPERLINK("http://evil.example","x")')
    client.force_login(org.auditor)
    [created] = [r for r in rows(client.get("/api/v1/audit", HTTP_ACCEPT="text/csv")) if r["action"] == "token-created"]
    assert created["target"] == '\'=HYPERLINK("http://evil.example","x")'
    assert client.get("/api/v1/audit", {"action": "token-created"}).json()["results"][0]["target"].startswith("=")
