"""A plain user cannot find out who was Bcc'd, or who got a message only
through the journal envelope (a group's expanded members, a forward's
target), on mail she received: not by `bcc:`, `to:`, a free word, nor
NOT.  The sender, admins and auditors can.  The backend tests run on both
engines; the web tests go through the API and the search page.

Alice sent "pricing" To sales@ (expanded to erin and frank) and bob@fabrikam,
Cc carol (forwarded to gina), Bcc dave.  Erin, a plain user, sees it as a
member of sales@; she sent "memo" to alice, Bcc henry.
"""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings
from django.urls import reverse

from tenants.actions import add_alias
from tests import search_support
from tests.archive_support import archive, corpus
from tests.conftest import make_org, make_outsider, membership_of
from tests.search_support import Corpus, at

engine = search_support.engine
backend = search_support.backend
elasticsearch_url = search_support.elasticsearch_url
elasticsearch_backend = search_support.elasticsearch_backend

ERIN = ["erin@contoso.com"]
ALICE = ["alice@contoso.com"]
HIDDEN_FROM_ERIN = [
    "bcc:dave",
    "bcc:dave@contoso.com",
    "to:dave",
    "to:dave@contoso.com",
    "dave",
    "dave@contoso.com",
    "to:frank",
    "to:frank@contoso.com",
    "frank",
    "cc:gina",
    "gina@contoso.com",
    '"gina contoso"',
    "pricing AND (dave OR frank OR gina)",
    "to:(dave OR frank)",
]


@pytest.fixture
def mail(backend) -> Corpus:
    corpus = Corpus(backend)
    corpus.add(
        "pricing",
        date=at("2026-03-02 09:30"),
        from_=["alice@contoso.com"],
        to=["sales@contoso.com", "bob@fabrikam.com", "erin@contoso.com", "frank@contoso.com"],
        cc=["carol@contoso.com", "gina@contoso.com"],
        bcc=["dave@contoso.com"],
        recipients=["bob@fabrikam.com", "erin@contoso.com", "frank@contoso.com", "carol@contoso.com"]
        + ["gina@contoso.com", "dave@contoso.com", "sales@contoso.com"],
        header_addresses=["alice@contoso.com", "sales@contoso.com", "bob@fabrikam.com", "carol@contoso.com"],
        subject="Pricing for Fabrikam",
    )
    corpus.add(
        "memo",
        date=at("2026-03-03 09:30"),
        from_=["erin@contoso.com"],
        to=["alice@contoso.com"],
        bcc=["henry@contoso.com"],
        recipients=["alice@contoso.com", "henry@contoso.com"],
        subject="Memo",
    )
    return corpus.index()


@pytest.mark.parametrize("query", HIDDEN_FROM_ERIN)
def test_a_plain_user_cannot_find_bcc_or_envelope_only_recipients_of_mail_she_received(mail, query):
    assert mail.find(query, addresses=ERIN) == []


@pytest.mark.parametrize("query", ["-bcc:dave", "-frank", "-to:gina@contoso.com", "NOT (dave OR frank)"])
def test_negating_a_hidden_recipient_tells_a_plain_user_nothing(mail, query):
    assert mail.find(query, addresses=ERIN) == mail.find("", addresses=ERIN) == ["memo", "pricing"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("to:sales", ["pricing"]),
        ("to:bob@fabrikam.com", ["pricing"]),
        ("cc:carol", ["pricing"]),
        ("carol@contoso.com", ["pricing"]),
        ("from:alice", ["pricing"]),
        ("to:erin@contoso.com", ["pricing"]),  # her own address, though she is only in the envelope
        ("erin@contoso.com", ["memo", "pricing"]),
        ("bcc:henry", ["memo"]),  # she sent the memo: she knows whom she blind-copied
        ("bcc:contoso.com", ["memo"]),
        ("henry@contoso.com", ["memo"]),
    ],
)
def test_a_plain_user_still_finds_what_the_headers_say_her_own_address_and_her_own_bcc(mail, query, expected):
    assert mail.find(query, addresses=ERIN) == expected


def test_the_sender_finds_whom_she_blind_copied(mail):
    assert mail.find("bcc:dave", addresses=ALICE) == ["pricing"]
    assert mail.find("gina", addresses=ALICE) == ["pricing"]
    assert mail.find("frank", addresses=ALICE) == ["pricing"]


@pytest.mark.parametrize("query", ["bcc:dave", "dave@contoso.com", "to:frank", "gina"])
def test_admins_and_auditors_find_every_recipient(mail, query):
    assert mail.find(query) == ["pricing"]


# --- through the web: the archived corpus report, each role and charlie ----------------------

PRICING = "02-bcc-expanded-forwarded.eml"


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with (
        django_db_blocker.unblock(),
        override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]),
        transaction.atomic(),
    ):
        org = make_org()
        outsider = make_outsider()
        message_id = archive(org.tenant, corpus(PRICING)).message_id
        yield org, outsider, message_id
        transaction.set_rollback(True)


def api_search(client, user, query: str) -> dict:
    client.force_login(user)
    response = client.get(reverse("api-messages"), {"q": query})
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("query", ["bcc:dave", "dave@contoso.com", "to:frank", "frank", "gina", "cc:gina"])
def test_the_api_gives_a_plain_user_no_hit_for_a_hidden_recipient(client, world, db, query):
    org, _, _ = world
    assert api_search(client, org.user, query)["count"] == 0


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
def test_the_api_gives_admins_and_auditors_the_bcc_and_envelope_recipients(client, world, db, role):
    org, _, message_id = world
    data = api_search(client, getattr(org, role), "bcc:dave")
    assert [r["id"] for r in data["results"]] == [message_id]
    assert data["results"][0]["bcc"] == ["dave@contoso.com"]
    assert api_search(client, getattr(org, role), "to:frank")["count"] == 1


def test_the_api_results_show_a_plain_user_the_headers_and_herself_only(client, world, db):
    org, _, message_id = world
    [result] = api_search(client, org.user, "pricing")["results"]
    assert result["id"] == message_id
    assert set(result["to"]) == {"sales@contoso.com", "bob@fabrikam.com", "erin@contoso.com"}
    assert result["cc"] == ["carol@contoso.com"]
    assert result["bcc"] == []


def test_a_plain_user_who_sent_the_message_finds_its_bcc(client, world, db):
    org, _, message_id = world
    add_alias(membership_of(org.owner), membership_of(org.user), "alice@contoso.com")
    data = api_search(client, org.user, "bcc:dave")
    assert [r["id"] for r in data["results"]] == [message_id]
    assert data["results"][0]["bcc"] == ["dave@contoso.com"]


def test_the_search_page_gives_a_plain_user_no_hit_for_a_bcc_recipient(client, world, db):
    org, _, message_id = world
    client.force_login(org.user)
    assert f'href="/messages/{message_id}/?' in client.get(reverse("search"), {"q": "pricing"}).content.decode()
    html = client.get(reverse("search"), {"q": "bcc:dave"}).content.decode()
    assert f'href="/messages/{message_id}/?' not in html


def test_the_outsider_finds_nothing_of_contosos_mail(client, world, db):
    _, outsider, _ = world
    assert api_search(client, outsider, "bcc:dave")["count"] == 0
    assert api_search(client, outsider, "pricing")["count"] == 0


def test_the_message_page_shows_a_plain_user_no_hidden_recipient(client, world, db):
    org, _, message_id = world
    client.force_login(org.user)
    html = client.get(reverse("message", args=[message_id])).content.decode()
    assert "erin@contoso.com" in html and "sales@contoso.com" in html
    assert not any(hidden in html for hidden in ("dave@contoso.com", "frank@contoso.com", "gina@contoso.com"))
    client.force_login(org.auditor)
    html = client.get(reverse("message", args=[message_id])).content.decode()
    assert all(hidden in html for hidden in ("dave@contoso.com", "frank@contoso.com", "gina@contoso.com"))


# --- the upgrade ----------------------------------------------------------------------------


def test_an_embedded_index_of_the_older_schema_says_it_is_being_rebuilt(tmp_path, caplog):
    from search.backends.embedded import SCHEMA_VERSION

    (tmp_path / "v2" / "tenant-1").mkdir(parents=True)
    search_support.embedded_backend(tmp_path).close()
    assert f"search schema {SCHEMA_VERSION} is new" in caplog.text and "index every message again" in caplog.text
    caplog.clear()
    search_support.embedded_backend(tmp_path).close()  # once only
    assert "is new" not in caplog.text
