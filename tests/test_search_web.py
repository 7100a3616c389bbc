"""Search, message view, downloads, the messages API, API tokens and the audit log.

Contoso's archive holds the sample corpus; Fabrikam (charlie's) holds one
message of its own.  Owner, admin and auditor see all of Contoso's mail;
erin, a plain user, only the message she received (through the sales@
group); charlie nothing of Contoso's, and every "not yours" is a 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.db import transaction
from django.test import override_settings
from django.urls import reverse

from archive.actions import index_pending
from archive.models import Message
from tenants.actions import add_alias, change_role
from tenants.api_tokens import create_api_token
from tenants.models import ApiToken, AuditEvent, Membership, Role
from tests.archive_support import archive, archive_corpus, corpus, report
from tests.conftest import make_org, make_outsider, membership_of

ALL_SEEING = ["owner", "admin", "auditor"]
HTML_REPORT_SUBJECT = "Newsletter with pictures"


@dataclass
class Archive:
    ids: dict[str, int]  # corpus file name → Message id
    fabrikam_id: int

    def __getitem__(self, name: str) -> int:
        return self.ids[name]


def html_report() -> bytes:
    """A journal report whose original is HTML with a script, a tracking pixel and an attachment."""
    original = (
        "From: news@contoso.com\r\nTo: erin@contoso.com\r\nSubject: " + HTML_REPORT_SUBJECT + "\r\n"
        "Date: Tue, 03 Mar 2026 08:00:00 +0000\r\nMessage-ID: <news-1@contoso.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="m1"\r\n\r\n'
        "--m1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><head><style>body{background:url(http://tracker.example/bg.png)}</style></head><body>"
        '<p onclick="steal()">Hello <b>Erin</b></p><script>alert(1)</script>'
        '<img src="http://tracker.example/pixel.gif?u=erin" alt="pixel">'
        '<iframe src="http://evil.example/"></iframe><a href="javascript:alert(2)">click</a></body></html>\r\n'
        "--m1\r\nContent-Type: text/html; name=page.html\r\nContent-Disposition: attachment; filename=page.html\r\n\r\n"
        "<script>alert(3)</script>\r\n--m1--\r\n"
    )
    return (
        "From: news@contoso.com\r\nTo: journal@archive.archiva.com\r\nSubject: x\r\nX-MS-Journal-Report:\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\nMIME-Version: 1.0\r\n\r\n'
        "--b0\r\nContent-Type: text/plain\r\n\r\nSender: news@contoso.com\r\nMessage-Id: <news-1@contoso.com>\r\n"
        "To: erin@contoso.com\r\n--b0\r\nContent-Type: message/rfc822\r\n\r\n" + original + "\r\n--b0--\r\n"
    ).encode()


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """Contoso's archive and Fabrikam's, built once for this module inside a
    transaction that is rolled back at its end (each test runs in a savepoint
    within it); archiving the corpus per test would cost seconds each."""
    with (
        django_db_blocker.unblock(),
        override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]),
        transaction.atomic(),
    ):
        org = make_org()
        outsider = make_outsider()
        delivered = archive_corpus(org.tenant)
        ids = {name: d.message_id for name, d in delivered.items()}
        ids["html"] = archive(org.tenant, html_report(), index=False).message_id
        fabrikam = outsider.memberships.get().tenant
        theirs = archive(
            fabrikam, report("fab-1@fabrikam.com", "Fabrikam internal", [("To", "charlie@fabrikam.com")]), index=False
        )
        index_pending()
        yield org, outsider, Archive(ids=ids, fabrikam_id=theirs.message_id)
        transaction.set_rollback(True)


@pytest.fixture
def org(world, db):
    return world[0]


@pytest.fixture
def outsider(world, db):
    return world[1]


@pytest.fixture
def mail(world, db) -> Archive:
    return world[2]


def login(client, org, role):
    client.force_login(getattr(org, role))


def result_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/messages/(\d+)/[?"]', html)]


def events(org, action) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(tenant=org.tenant, action=action).order_by("id"))


# --- search page ----------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_SEEING)
def test_admins_and_auditors_find_all_of_the_tenants_mail_newest_first(client, org, mail, role):
    login(client, org, role)
    response = client.get(reverse("search"))
    assert response.status_code == 200
    html = response.content.decode()
    total = len(set(mail.ids.values()))
    assert re.search(rf'id="result-count"[^>]*>1–{total} of {total} messages archived, newest first', html)
    found = result_ids(html)
    assert set(found) == set(mail.ids.values()) and mail.fabrikam_id not in found
    dates = [Message.objects.get(pk=i).date for i in found]
    assert dates == sorted(dates, reverse=True)


def test_a_plain_user_finds_only_mail_she_sent_or_received(client, org, mail):
    login(client, org, "user")
    html = client.get(reverse("search")).content.decode()
    assert set(result_ids(html)) == {mail["02-bcc-expanded-forwarded.eml"], mail["html"]}
    html = client.get(reverse("search"), {"q": "quarterly"}).content.decode()
    assert result_ids(html) == []


def test_the_outsider_finds_nothing_of_contoso(client, outsider, org, mail):
    client.force_login(outsider)
    html = client.get(reverse("search"), {"q": "pricing OR quarterly OR invoice"}).content.decode()
    assert result_ids(html) == []
    assert result_ids(client.get(reverse("search")).content.decode()) == [mail.fabrikam_id]


def test_an_alias_widens_a_plain_users_mail_only_within_her_tenant(client, org, outsider, mail):
    add_alias(membership_of(org.owner), membership_of(org.user), "alice@contoso.com")
    login(client, org, "user")
    html = client.get(reverse("search"), {"q": "from:alice@contoso.com"}).content.decode()
    assert set(result_ids(html)) == {mail["01-simple.eml"], mail["02-bcc-expanded-forwarded.eml"]}
    assert client.get(reverse("message", args=[mail["01-simple.eml"]])).status_code == 200
    # The same alias in Fabrikam reaches nothing of Contoso's.
    charlie = membership_of(outsider)
    add_alias(charlie, charlie, "alice@contoso.com")
    client.force_login(outsider)
    assert result_ids(client.get(reverse("search"), {"q": "from:alice@contoso.com"}).content.decode()) == []
    assert result_ids(client.get(reverse("search")).content.decode()) == [mail.fabrikam_id]
    assert client.get(reverse("message", args=[mail["01-simple.eml"]])).status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("from:alice@contoso.com", ["01-simple.eml", "02-bcc-expanded-forwarded.eml"]),
        ("bcc:dave@contoso.com", ["02-bcc-expanded-forwarded.eml"]),
        ("attachment:lines.csv", ["03-attachments.eml"]),
        ("attachment:sku", ["03-attachments.eml"]),
        ('"pricing proposal below"', ["02-bcc-expanded-forwarded.eml"]),
        ("after:2026-03-04 before:2026-03-05", ["11-no-message-id.eml"]),
        ("has:attachment subject:invoice", ["03-attachments.eml"]),
    ],
)
def test_the_search_page_finds_by_sender_bcc_attachment_phrase_and_date(client, org, mail, query, expected):
    login(client, org, "auditor")
    response = client.get(reverse("search"), {"q": query})
    assert response.status_code == 200
    assert set(result_ids(response.content.decode())) == {mail[name] for name in expected}


def test_results_show_date_from_to_subject_and_an_attachment_mark(client, org, mail):
    login(client, org, "admin")
    html = client.get(reverse("search"), {"q": "invoice"}).content.decode()
    row = re.search(r"<tbody>(.*?)</tbody>", html, re.S).group(1)
    assert "billing@contoso.com" in row and "ap@fabrikam.com" in row and "Invoice 4471" in row
    assert "2 Mar 2026" in row and 'aria-label="has attachments"' in row


def test_a_bad_query_is_answered_400_with_the_reason(client, org, mail):
    login(client, org, "user")
    response = client.get(reverse("search"), {"q": '(unbalanced "'})
    assert response.status_code == 400
    assert 'id="search-error"' in response.content.decode()
    response = client.get(reverse("api-messages"), {"q": "after:2026-13-45"})
    assert response.status_code == 400 and response.json()["error"]


def test_results_are_paged(client, org, mail, monkeypatch):
    monkeypatch.setattr("web.search.PAGE_SIZE", 4)
    login(client, org, "auditor")
    pages = [result_ids(client.get(reverse("search"), {"page": n}).content.decode()) for n in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [4, 4, 4, 0]
    assert len({i for p in pages for i in p}) == 12
    html = client.get(reverse("search"), {"page": 2}).content.decode()
    assert "page=1" in html and "page=3" in html and "page 2 of 3" in html


def test_every_search_is_in_the_audit_log(client, org, mail):
    login(client, org, "user")
    client.get(reverse("search"), {"q": "pricing"})
    [event] = events(org, AuditEvent.Action.SEARCH)
    assert event.user == org.user and event.detail == {"query": "pricing", "page": 1, "count": 1}
    assert event.ip == "127.0.0.1"


def test_search_needs_a_login(client, org, mail):
    assert client.get(reverse("search")).status_code == 302


# --- message view ------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL_SEEING)
def test_the_message_view_shows_headers_and_every_envelope_recipient(client, org, mail, role):
    login(client, org, role)
    response = client.get(reverse("message", args=[mail["02-bcc-expanded-forwarded.eml"]]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Pricing for Fabrikam" in html and "alice@contoso.com" in html
    envelope = re.search(r'id="envelope-recipients">(.*?)</table>', html, re.S).group(1)
    assert "dave@contoso.com" in envelope and "Bcc" in envelope
    assert "expanded from group sales@contoso.com" in envelope
    assert "forwarded from carol@contoso.com" in envelope
    assert 'id="bcc">dave@contoso.com<' in html
    assert "Team, pricing proposal below." in html
    assert 'id="journal-reports"' in html


def test_a_plain_user_reads_her_message_without_its_bcc_recipients(client, org, mail):
    login(client, org, "user")
    response = client.get(reverse("message", args=[mail["02-bcc-expanded-forwarded.eml"]]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "erin@contoso.com" in html and "dave@contoso.com" not in html
    assert 'id="journal-reports"' not in html


def test_a_plain_user_gets_404_for_mail_that_is_not_hers(client, org, mail):
    login(client, org, "user")
    for url in (
        reverse("message", args=[mail["01-simple.eml"]]),
        reverse("message-attachment", args=[mail["03-attachments.eml"], 1]),
        reverse("api-message-eml", args=[mail["01-simple.eml"]]),
    ):
        assert client.get(url).status_code == 404, url
    assert events(org, AuditEvent.Action.VIEW) == events(org, AuditEvent.Action.DOWNLOAD) == []


@pytest.mark.parametrize("role", ["owner", "auditor", "user"])
def test_another_tenants_message_is_404_like_a_missing_one(client, org, mail, role):
    login(client, org, role)
    for message_id in (mail.fabrikam_id, 10**9):
        assert client.get(reverse("message", args=[message_id])).status_code == 404
        assert client.get(reverse("message-attachment", args=[message_id, 1])).status_code == 404
        response = client.get(reverse("api-message-eml", args=[message_id]))
        assert response.status_code == 404 and response.json() == {"error": "not found"}


def test_the_outsider_gets_404_for_every_contoso_message(client, outsider, org, mail):
    client.force_login(outsider)
    for message_id in set(mail.ids.values()):
        assert client.get(reverse("message", args=[message_id])).status_code == 404
        assert client.get(reverse("api-message-eml", args=[message_id])).status_code == 404
    assert client.get(reverse("message-attachment", args=[mail["03-attachments.eml"], 1])).status_code == 404
    assert client.get(reverse("message", args=[mail.fabrikam_id])).status_code == 200


def test_html_is_sanitized_remote_content_blocked_and_framed_in_a_sandbox(client, org, mail):
    login(client, org, "user")
    response = client.get(reverse("message", args=[mail["html"]]))
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "img-src 'self' data:;" in csp and "script-src 'self'" in csp and "http" not in csp
    html = response.content.decode()
    frame = re.search(r'<iframe class="message-body"[^>]*sandbox="([^"]*)"[^>]*srcdoc="([^"]*)"', html)
    assert frame and "allow-scripts" not in frame.group(1) and "allow-same-origin" not in frame.group(1)
    body = frame.group(2)
    assert "Hello &lt;b&gt;Erin&lt;/b&gt;" in body  # real markup, escaped once for the attribute
    for banned in ("script", "onclick", "tracker.example", "evil.example", "javascript:", "<style", "iframe"):
        assert banned not in body.replace("&lt;", "<"), banned
    assert 'id="remote-blocked"' in html


def test_every_view_is_in_the_audit_log(client, org, mail):
    login(client, org, "auditor")
    client.get(reverse("message", args=[mail["01-simple.eml"]]))
    [event] = events(org, AuditEvent.Action.VIEW)
    assert event.user == org.auditor and event.detail == {"message": mail["01-simple.eml"]}


# --- attachments and the original ---------------------------------------------------------


@pytest.mark.parametrize("role", [*ALL_SEEING])
def test_attachments_download_as_the_bytes_that_were_sent(client, org, mail, role):
    login(client, org, role)
    message_id = mail["03-attachments.eml"]
    html = client.get(reverse("message", args=[message_id])).content.decode()
    assert "invoice-4471.pdf" in html and "lines.csv" in html
    response = client.get(reverse("message-attachment", args=[message_id, 2]))
    assert response.status_code == 200
    assert b"".join(response) == b"sku,qty,price\nA-100,3,19.99\nB-200,1,249.00\n"
    assert response["Content-Type"] == "application/octet-stream"
    assert 'filename="lines.csv"' in response["Content-Disposition"]
    pdf = client.get(reverse("message-attachment", args=[message_id, 1]))
    assert b"".join(pdf).startswith(b"%PDF-1.4")
    assert client.get(reverse("message-attachment", args=[message_id, 3])).status_code == 404
    [event] = [e for e in events(org, AuditEvent.Action.DOWNLOAD) if e.detail.get("attachment") == 2]
    assert event.detail == {"message": message_id, "attachment": 2, "name": "lines.csv"}


def test_an_html_attachment_never_renders_on_our_origin(client, org, mail):
    login(client, org, "user")
    response = client.get(reverse("message-attachment", args=[mail["html"], 1]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment")
    assert "sandbox" in response["Content-Security-Policy"]


@pytest.mark.parametrize("role", [*ALL_SEEING, "user"])
def test_the_eml_download_is_the_original_message_not_the_journal_report(client, org, mail, role):
    login(client, org, role)
    message_id = mail["02-bcc-expanded-forwarded.eml"]
    response = client.get(reverse("api-message-eml", args=[message_id]))
    assert response.status_code == 200
    assert response["Content-Type"] == "message/rfc822"
    data = b"".join(response)
    raw = corpus("02-bcc-expanded-forwarded.eml")
    original = raw[raw.index(b"From: alice@contoso.com\r\nTo: sales@") :].split(b"\r\n--_000_")[0]
    assert data.rstrip(b"\r\n") == original.rstrip(b"\r\n")
    assert b"X-MS-Journal-Report" not in data
    [event] = events(org, AuditEvent.Action.DOWNLOAD)
    assert event.detail == {"message": message_id, "format": "eml"}


def test_the_eml_of_a_binary_transfer_original_is_byte_for_byte(client, org, mail):
    login(client, org, "auditor")
    data = b"".join(client.get(reverse("api-message-eml", args=[mail["05-binary-cte.eml"]])))
    assert "Café crème, naïve résumé.".encode() in data


def test_the_eml_download_needs_credentials(client, org, mail):
    response = client.get(reverse("api-message-eml", args=[mail["01-simple.eml"]]))
    assert response.status_code == 401 and response.json() == {"error": "authentication required"}


# --- the messages API ---------------------------------------------------------------


def test_the_messages_api_answers_count_and_results_in_the_documented_shape(client, org, mail):
    login(client, org, "auditor")
    response = client.get(reverse("api-messages"), {"q": "pricing"})
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"count", "results"} and data["count"] == 1
    [result] = data["results"]
    assert set(result) == {"id", "date", "from", "to", "cc", "bcc", "subject", "size", "attachments"}
    assert result["id"] == mail["02-bcc-expanded-forwarded.eml"]
    assert result["date"] == "2026-03-02T09:30:00+00:00"
    assert result["from"] == "alice@contoso.com" and result["subject"] == "Pricing for Fabrikam"
    assert {"sales@contoso.com", "bob@fabrikam.com", "erin@contoso.com"} <= set(result["to"])
    assert {"carol@contoso.com", "gina@contoso.com"} <= set(result["cc"])
    assert result["bcc"] == ["dave@contoso.com"]
    assert result["size"] > 0 and result["attachments"] == []


def test_the_messages_api_pages_and_lists_attachments(client, org, mail, monkeypatch):
    monkeypatch.setattr("web.search.PAGE_SIZE", 5)
    login(client, org, "admin")
    first = client.get(reverse("api-messages")).json()
    third = client.get(reverse("api-messages"), {"page": 3}).json()
    assert first["count"] == third["count"] == 12
    assert len(first["results"]) == 5 and len(third["results"]) == 2
    invoice = client.get(reverse("api-messages"), {"q": "subject:invoice"}).json()["results"][0]
    assert [a["name"] for a in invoice["attachments"]] == ["invoice-4471.pdf", "lines.csv"]


def test_the_messages_api_gives_a_plain_user_only_her_mail_and_no_bcc_of_others(client, org, mail):
    login(client, org, "user")
    data = client.get(reverse("api-messages")).json()
    assert data["count"] == 2
    assert {r["id"] for r in data["results"]} == {mail["02-bcc-expanded-forwarded.eml"], mail["html"]}
    assert all(r["bcc"] == [] for r in data["results"])


def test_the_messages_api_gives_the_outsider_only_his_own(client, outsider, org, mail):
    client.force_login(outsider)
    data = client.get(reverse("api-messages")).json()
    assert data["count"] == 1 and [r["id"] for r in data["results"]] == [mail.fabrikam_id]


def test_the_messages_api_without_credentials_is_401(client, org, mail):
    assert client.get(reverse("api-messages")).status_code == 401


# --- API tokens ----------------------------------------------------------------------


def create_token(client, org, name="export script") -> str:
    login(client, org, "admin")
    response = client.post(reverse("tokens"), {"name": name, "scope": "admin"})
    assert response.status_code == 200
    return re.search(r'id="new-token">([^<]+)<', response.content.decode()).group(1)


def bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_an_admin_creates_a_token_that_is_shown_once_and_stored_hashed(client, org, mail):
    secret = create_token(client, org)
    token = ApiToken.objects.get(tenant=org.tenant)
    assert token.token_hash != secret and secret not in token.token_hash and secret.startswith(token.prefix)
    html = client.get(reverse("tokens")).content.decode()
    assert "export script" in html and secret not in html
    [event] = events(org, AuditEvent.Action.TOKEN_CREATED)
    assert event.user == org.admin


def test_a_bearer_token_works_on_every_api_endpoint_and_acts_for_its_creator(client, org, mail):
    secret = create_token(client, org)
    client.logout()
    data = client.get(reverse("api-messages"), {"q": "pricing"}, **bearer(secret)).json()
    assert data["count"] == 1
    eml = client.get(reverse("api-message-eml", args=[mail["01-simple.eml"]]), **bearer(secret))
    assert eml.status_code == 200 and b"Quarterly numbers" in b"".join(eml)
    assert client.get(reverse("api-status"), **bearer(secret)).json()["messages_archived"] == 12
    # The log says who, and through which token.
    token = ApiToken.objects.get(tenant=org.tenant)
    search = events(org, AuditEvent.Action.SEARCH)[-1]
    assert search.user == org.admin and search.token == token
    assert token.__class__.objects.get(pk=token.pk).last_used_at is not None


def test_a_users_token_sees_what_the_user_sees(client, org, mail):
    membership = Membership.objects.get(user=org.admin, tenant=org.tenant)
    _, secret = create_api_token(membership, "admin's script")
    change_role(membership_of(org.owner), membership, Role.USER)  # demoted: bob has no mail here
    assert client.get(reverse("api-messages"), **bearer(secret)).json()["count"] == 0


@pytest.mark.parametrize("header", ["Bearer arc_not-a-token", "Bearer ", "bearer  "])
def test_a_bad_bearer_token_is_401_even_with_a_session(client, org, mail, header):
    login(client, org, "owner")
    response = client.get(reverse("api-messages"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_token_stops_working_at_once(client, org, mail):
    secret = create_token(client, org)
    token = ApiToken.objects.get(tenant=org.tenant)
    response = client.post(reverse("token-revoke", args=[token.pk]))
    assert response.status_code == 302
    assert client.get(reverse("api-messages"), **bearer(secret)).status_code == 401
    assert client.get(reverse("api-status"), **bearer(secret)).status_code == 401
    assert "revoked" in client.get(reverse("tokens")).content.decode()
    [event] = events(org, AuditEvent.Action.TOKEN_REVOKED)
    assert event.detail["token"] == token.pk


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_cannot_create_or_revoke_tokens(client, org, mail, role):
    membership = Membership.objects.get(user=org.admin, tenant=org.tenant)
    token, _ = create_api_token(membership, "admin's")
    login(client, org, role)
    assert client.get(reverse("tokens")).status_code == 403
    assert client.post(reverse("tokens"), {"name": "mine"}).status_code == 403
    assert client.post(reverse("token-revoke", args=[token.pk])).status_code == 403
    assert ApiToken.objects.filter(tenant=org.tenant).count() == 1
    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_outsider_cannot_see_or_revoke_contosos_tokens(client, org, outsider, mail):
    membership = Membership.objects.get(user=org.admin, tenant=org.tenant)
    token, secret = create_api_token(membership, "contoso secret script")
    client.force_login(outsider)
    assert "contoso secret script" not in client.get(reverse("tokens")).content.decode()
    assert client.post(reverse("token-revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    # And a Contoso token never reaches Fabrikam's mail.
    client.logout()
    data = client.get(reverse("api-messages"), {"q": "fabrikam"}, **bearer(secret)).json()
    assert mail.fabrikam_id not in [r["id"] for r in data["results"]]
    assert client.get(reverse("api-message-eml", args=[mail.fabrikam_id]), **bearer(secret)).status_code == 404


# --- the audit log page -------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
def test_admins_and_auditors_read_the_audit_log_newest_first(client, org, mail, role):
    login(client, org, "user")
    client.get(reverse("search"), {"q": "pricing"})
    client.get(reverse("message", args=[mail["02-bcc-expanded-forwarded.eml"]]))
    client.get(reverse("api-message-eml", args=[mail["02-bcc-expanded-forwarded.eml"]]))
    login(client, org, role)
    response = client.get(reverse("audit"))
    assert response.status_code == 200
    rows = re.search(r'id="audit-events">.*?<tbody>(.*?)</tbody>', response.content.decode(), re.S).group(1)
    actions = re.findall(r'<span class="badge">([^<]+)</span>', rows)
    # Newest first; below them, the fixture's members joining (invited, accepted).
    assert actions[:3] == ["download", "view", "search"] and set(actions[3:]) <= {
        "invitation sent",
        "invitation accepted",
    }
    assert "erin@contoso.com" in rows and "pricing" in rows


def test_the_audit_log_is_paged(client, org, mail, monkeypatch):
    monkeypatch.setattr("web.audit.PAGE_SIZE", 2)
    login(client, org, "auditor")
    for word in ("one", "two", "three"):
        client.get(reverse("search"), {"q": word})
    login(client, org, "owner")
    first = client.get(reverse("audit")).content.decode()
    second = client.get(reverse("audit"), {"page": 2}).content.decode()
    assert "three" in first and "two" in first and "one" not in first
    pages = -(-AuditEvent.objects.filter(tenant=org.tenant).count() // 2)  # with the members' joining
    assert "one" in second and f"Page 2 of {pages}" in second


def test_plain_users_cannot_read_the_audit_log(client, org, mail):
    login(client, org, "user")
    assert client.get(reverse("audit")).status_code == 403


def test_the_outsider_reads_only_his_own_tenants_audit_log(client, org, outsider, mail):
    login(client, org, "auditor")
    client.get(reverse("search"), {"q": "contoso-secret-query"})
    client.force_login(outsider)
    html = client.get(reverse("audit")).content.decode()
    assert "contoso-secret-query" not in html and "dave@contoso.com" not in html


def test_admins_see_links_to_the_audit_log_and_tokens_auditors_the_audit_log_users_only_search(client, org, mail):
    login(client, org, "admin")
    html = client.get(reverse("search")).content.decode()
    assert reverse("audit") in html and reverse("tokens") in html
    login(client, org, "auditor")
    html = client.get(reverse("search")).content.decode()
    assert reverse("audit") in html and reverse("tokens") not in html
    login(client, org, "user")
    html = client.get(reverse("search")).content.decode()
    assert reverse("search") in html and reverse("audit") not in html


# --- everyday search (issue 23, point 2) ------------------------------------------------------------------


def test_the_search_form_without_javascript_writes_the_query_into_the_box(client, org, mail):
    login(client, org, "owner")
    response = client.get(
        reverse("search"),
        {"q": "budget from:old@x.com", "sort": "oldest", "f_from": "alice@contoso.com", "f_subject": "q3 plan",
         "f_after": "2026-03-01", "f_before": "", "f_to": "", "f_cc": "carol@contoso.com", "f_has": "attachment"},
    )  # fmt: skip
    assert response.status_code == 302
    target = response["Location"]
    followed = client.get(target)
    assert (
        followed.context["query"]
        == 'budget from:alice@contoso.com cc:carol@contoso.com subject:"q3 plan" after:2026-03-01 has:attachment'
    )
    assert followed.context["sort"] == "oldest"
    html = followed.content.decode()
    # The form shows what the box says, so the next change starts from it.
    assert 'id="f_from" name="f_from" data-field="from" value="alice@contoso.com"' in html
    assert 'id="f_has" name="f_has" value="attachment" data-field="has" checked' in html


def test_results_are_counted_n_to_m_of_n_and_sort_both_ways(client, org, mail, monkeypatch):
    monkeypatch.setattr("web.search.PAGE_SIZE", 2)
    login(client, org, "owner")
    total = len(set(mail.ids.values()))
    newest = client.get(reverse("search"))
    assert re.search(rf'id="result-count"[^>]*>1–2 of {total} messages archived, newest first', newest.content.decode())
    second = client.get(reverse("search"), {"page": 2, "sort": "oldest"}).content.decode()
    assert re.search(rf'id="result-count"[^>]*>3–4 of {total} messages archived, oldest first', second)
    assert f"3–4 of {total}" in second and "sort=oldest&amp;page=1" in second and "sort=oldest&amp;page=3" in second
    oldest_all = [i for n in range(1, total // 2 + 2) for i in result_ids(
        client.get(reverse("search"), {"page": n, "sort": "oldest"}).content.decode())]  # fmt: skip
    newest_all = [i for n in range(1, total // 2 + 2) for i in result_ids(
        client.get(reverse("search"), {"page": n}).content.decode())]  # fmt: skip
    assert sorted(oldest_all) == sorted(newest_all) and len(oldest_all) == total
    assert oldest_all == newest_all[::-1]
    assert client.get(reverse("search"), {"sort": "relevance", "q": "report"}).status_code == 200


def test_a_message_opened_from_results_links_back_and_to_its_neighbours(client, org, mail, monkeypatch):
    monkeypatch.setattr("web.search.PAGE_SIZE", 2)
    login(client, org, "owner")
    page2 = client.get(reverse("search"), {"page": 2}).content.decode()
    links = re.findall(r'href="(/messages/\d+/\?[^"]+)"', page2)
    first_of_page2 = links[0].replace("&amp;", "&")
    assert "n=2" in first_of_page2
    html = client.get(first_of_page2).content.decode()
    assert 'href="/search/?page=2" id="back-to-search"' in html
    ordered = [i for n in (1, 2) for i in result_ids(client.get(reverse("search"), {"page": n}).content.decode())]
    previous = re.search(r'href="/messages/(\d+)/\?q=&amp;sort=newest&amp;n=1" rel="prev"', html)
    following = re.search(r'href="/messages/(\d+)/\?q=&amp;sort=newest&amp;n=3" rel="next"', html)
    assert previous and int(previous.group(1)) == ordered[1]
    assert following and int(following.group(1)) == ordered[3]
    print_view = client.get(first_of_page2 + "&view=print").content.decode()
    assert 'class="wrap print-view"' in print_view and 'id="print-note"' in print_view
    assert 'rel="next"' not in print_view


def test_a_message_opened_directly_links_back_to_an_empty_search(client, org, mail):
    login(client, org, "owner")
    html = client.get(
        reverse("message", args=[mail["plain.eml"] if "plain.eml" in mail.ids else next(iter(mail.ids.values()))])
    ).content.decode()
    assert 'href="/search/" id="back-to-search"' in html and 'rel="prev"' not in html


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("from:", "from: needs an address, e.g. from:anna@contoso.com"),
        ("budget to:", "to: needs an address, e.g. to:anna@contoso.com"),
        ("after:", "after: needs a date as YYYY-MM-DD, e.g. after:2026-03-01"),
        ("subject:", "subject: needs a word or a quoted phrase, e.g. subject:&quot;quarterly report&quot;"),
    ],
)
def test_bad_syntax_says_what_to_type(client, org, mail, query, says):
    login(client, org, "owner")
    response = client.get(reverse("search"), {"q": query})
    assert response.status_code == 400
    assert says in response.content.decode()


# --- API token scopes and expiry (issue 23, point 5) -------------------------------------------------------


def test_a_search_read_token_searches_and_downloads_only(client, org, mail):
    owner = Membership.objects.get(user=org.owner)
    token, secret = create_api_token(owner, "reader", scope="search:read")
    assert token.scope == "search:read"
    assert client.get(reverse("api-messages"), {"q": "quarterly"}, **bearer(secret)).status_code == 200
    eml = client.get(reverse("api-message-eml", args=[next(iter(mail.ids.values()))]), **bearer(secret))
    assert eml.status_code == 200
    refused = client.get(reverse("api-status"), **bearer(secret))
    assert refused.status_code == 403 and "search:read" in refused.json()["error"]
    assert client.get(reverse("api-audit"), **bearer(secret)).status_code == 403
    posted = client.post(reverse("api-exports"), {"q": "x"}, content_type="application/json", **bearer(secret))
    assert posted.status_code == 403
    _, admin_secret = create_api_token(owner, "admin script", scope="admin")
    assert client.get(reverse("api-status"), **bearer(admin_secret)).status_code == 200


def test_a_token_never_has_more_than_its_creators_role(client, org, mail):
    # A plain user's "admin" token is still only a plain user: no audit log, only her own mail.
    erin = Membership.objects.get(user=org.user)
    _, erins = create_api_token(erin, "wants admin", scope="admin")
    assert client.get(reverse("api-audit"), **bearer(erins)).status_code in (403, 404)
    assert 0 < client.get(reverse("api-messages"), **bearer(erins)).json()["count"] < len(set(mail.ids.values()))
    with pytest.raises(ValueError, match="scope must be one of"):
        create_api_token(Membership.objects.get(user=org.owner), "odd", scope="write:all")
    # An admin token of someone demoted acts with their new role: no more admin pages.
    bob = Membership.objects.get(user=org.admin)
    _, secret = create_api_token(bob, "bob's admin token", scope="admin")
    assert client.get(reverse("api-audit"), **bearer(secret)).status_code == 200
    change_role(Membership.objects.get(user=org.owner), bob, Role.USER)
    assert client.get(reverse("api-audit"), **bearer(secret)).status_code in (403, 404)


def test_an_expired_token_stops_working_and_the_page_says_so(client, org, mail, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    owner = Membership.objects.get(user=org.owner)
    with pytest.raises(ValueError, match="future"):
        create_api_token(owner, "past", expires_at=timezone.now() - timedelta(days=1))
    token, secret = create_api_token(
        owner, "short-lived", scope="search:read", expires_at=timezone.now() + timedelta(days=1)
    )
    assert client.get(reverse("api-messages"), **bearer(secret)).status_code == 200
    later = timezone.now() + timedelta(days=2)
    monkeypatch.setattr("django.utils.timezone.now", lambda: later)
    assert client.get(reverse("api-messages"), **bearer(secret)).status_code == 401
    login(client, org, "owner")
    html = client.get(reverse("tokens")).content.decode()
    assert "expired" in html and "short-lived" in html


def test_the_tokens_page_creates_a_scoped_expiring_token_with_a_copy_button(client, org, mail):
    from django.utils import timezone

    login(client, org, "owner")
    day = (timezone.now().date().replace(day=1) + __import__("datetime").timedelta(days=62)).isoformat()
    html = client.post(
        reverse("tokens"), {"name": "reader", "scope": "search:read", "expires_on": day}
    ).content.decode()
    assert 'data-copy="new-token" id="copy-new-token"' in html
    assert 'id="new-token-scope">search:read<' in html
    token = ApiToken.objects.get(tenant=org.tenant, name="reader")
    assert token.scope == "search:read" and token.expires_at.date().isoformat() == day
    past = client.post(reverse("tokens"), {"name": "x", "scope": "admin", "expires_on": "2001-01-01"}).content.decode()
    assert "Pick a day after today" in past


def test_the_messages_api_sorts_both_ways(client, org, mail):
    login(client, org, "owner")
    newest = [m["id"] for m in client.get(reverse("api-messages")).json()["results"]]
    oldest = [m["id"] for m in client.get(reverse("api-messages"), {"sort": "oldest"}).json()["results"]]
    assert len(newest) > 3 and oldest == newest[::-1]
    unknown = [m["id"] for m in client.get(reverse("api-messages"), {"sort": "sideways"}).json()["results"]]
    assert unknown == newest  # an unknown order falls back to newest first
