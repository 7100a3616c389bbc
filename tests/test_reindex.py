"""`manage.py reindex --tenant …` rebuilds a tenant's index from its bucket alone."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from archive.models import Message
from tests.archive_support import (  # noqa: F401
    archive,
    archive_corpus,
    backend_fixture,
    corpus,
    corpus_names,
    report,
    search_ids,
)


def test_reindex_rebuilds_a_lost_index_from_the_bucket(org, outsider, backend):
    archive_corpus(org.tenant)
    fabrikam = outsider.memberships.get().tenant
    theirs = archive(fabrikam, report("fab-1@fabrikam.com", "Fabrikam internal", [("To", "charlie@fabrikam.com")]))
    expected = set(Message.objects.filter(tenant=org.tenant).values_list("pk", flat=True))
    backend.delete_tenant(org.tenant.pk)  # the index is lost
    assert search_ids(backend, org.tenant, "") == []

    out = io.StringIO()
    call_command("reindex", "--tenant", str(org.tenant.public_id), stdout=out)
    assert set(search_ids(backend, org.tenant, "")) == expected
    # Text that only the re-parsed bucket objects hold is searchable again.
    assert search_ids(backend, org.tenant, '"41 dollars per share"')
    assert search_ids(backend, org.tenant, "attachment:sku")
    assert search_ids(backend, org.tenant, "bcc:dave@contoso.com")
    assert f"{len(expected)}/{len(expected)} (100%)" in out.getvalue()
    assert "\r" in out.getvalue()  # one progress line, rewritten in place
    assert f"Indexed {len(expected)} of {len(expected)} messages of Contoso" in out.getvalue()
    # The other tenant's index is untouched and still holds only its own mail.
    assert search_ids(backend, fabrikam, "") == [theirs.message_id]


def test_reindex_by_name_marks_every_message_indexed(org, outsider, backend):
    for name in corpus_names():  # archived, none indexed yet
        archive(org.tenant, corpus(name), index=False)
    assert Message.objects.filter(tenant=org.tenant, index_status=Message.IndexStatus.PENDING).count() > 3
    call_command("reindex", "--tenant", "Contoso", "--batch", "3", stdout=io.StringIO())
    assert not Message.objects.filter(tenant=org.tenant, index_status=Message.IndexStatus.PENDING).exists()


def test_reindex_of_an_unknown_tenant_says_so(org, outsider):
    with pytest.raises(CommandError, match="no tenant named"):
        call_command("reindex", "--tenant", "Nonexistent Ltd", stdout=io.StringIO())


def test_reindex_reports_a_message_whose_object_is_missing_and_goes_on(org, outsider, backend, client):
    archive_corpus(org.tenant)
    broken = Message.objects.filter(tenant=org.tenant).order_by("id").first()
    # A damaged row (its text object lost): no action makes one.
    Message.objects.filter(pk=broken.pk).update(text_key="text/00/00/missing.json")
    backend.delete_tenant(org.tenant.pk)
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 messages could not be read"):
        call_command("reindex", "--tenant", "Contoso", stdout=io.StringIO(), stderr=err)
    assert f"message {broken.pk}" in err.getvalue()
    found = search_ids(backend, org.tenant, "")
    assert broken.pk not in found and len(found) == Message.objects.filter(tenant=org.tenant).count() - 1
    broken.refresh_from_db()
    assert broken.index_status == Message.IndexStatus.FAILED and "missing" in broken.index_error
    client.force_login(org.admin)
    assert client.get("/api/v1/status").json()["index_failed"] == 1
    client.force_login(outsider)
    assert client.get("/api/v1/status").json()["index_failed"] == 0


def test_reindex_reparse_extracts_the_text_again_from_the_originals(org, outsider, backend):
    """After a parser fix: the text objects are written anew from the stored originals."""
    archive_corpus(org.tenant)
    message = Message.objects.get(tenant=org.tenant, subject="Invoice 4471")
    # As a message archived before its text was extracted (no action unsets it).
    Message.objects.filter(pk=message.pk).update(text_key="", text_sha256="")
    backend.delete_tenant(org.tenant.pk)
    call_command("reindex", "--tenant", "Contoso", "--reparse", "--clean", stdout=io.StringIO())
    message.refresh_from_db()
    assert message.text_key and message.index_status == Message.IndexStatus.INDEXED
    assert search_ids(backend, org.tenant, "attachment:sku") == [message.pk]
