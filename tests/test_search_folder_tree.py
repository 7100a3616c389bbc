"""The folder tree of a member's own mailbox beside the search results:
built from the archived mailbox items, each folder a `folder:"…"` search,
and never another person's mailbox."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from archive.items import Item, store_items

pytestmark = pytest.mark.django_db

MIME = b"From: bert@fabrikam.com\r\nTo: erin@contoso.com\r\nSubject: s{n}\r\nMessage-ID: <{n}@x>\r\n\r\nhi\r\n"


def stored(tenant, mailbox: str, folders: list[str]) -> None:
    store_items(
        tenant,
        [
            Item("mail", mailbox, folder, f"g{n}-{mailbox}", MIME.replace(b"{n}", str(n).encode()))
            for n, folder in enumerate(folders)
        ],
    )


def tree_html(client) -> str:
    response = client.get(reverse("search"))
    assert response.status_code == 200
    return response.content.decode()


def test_a_user_sees_the_tree_of_their_own_mailbox_with_counts_and_folder_links(client, org):
    stored(org.tenant, "erin@contoso.com", ["Inbox", "Inbox/Projects", "Inbox/Projects", "Archive/2026"])
    stored(org.tenant, "alice@contoso.com", ["Secret Plans"])
    client.force_login(org.user)
    html = tree_html(client)
    nav = re.search(r'<nav class="folder-tree" aria-label="Folders of erin@contoso.com".*?</nav>', html, re.S).group(0)
    assert re.findall(r">([^<>]+)</a> <span class=\"muted\">(\d+)</span>", nav) == [
        ("Archive", "1"),
        ("2026", "1"),
        ("Inbox", "3"),
        ("Projects", "2"),
    ]
    assert 'href="/search/?q=folder%3A%22Inbox%2FProjects%22"' in nav
    assert "Secret Plans" not in html and "Folders of alice@contoso.com" not in html


def test_an_admin_sees_only_their_own_mailbox_tree_too(client, org):
    stored(org.tenant, "erin@contoso.com", ["Inbox"])
    client.force_login(org.admin)
    assert "folder-tree" not in tree_html(client)


def test_the_outsider_sees_no_tree_of_another_tenant(client, org, outsider):
    stored(org.tenant, "charlie@fabrikam.com", ["Inbox"])  # a Contoso mailbox item under charlie's address
    client.force_login(outsider)
    assert "folder-tree" not in tree_html(client)
