"""eDiscovery export: a query's messages as a ZIP of .eml files or one mbox,
with manifest.csv whose hashes match the files, built by the task, shown
with progress, downloadable for 7 days by its creator or admins, audited.

Contoso's archive holds journal reports: two Sam sent to erin (one Bcc
henry), one to frank only.  Erin, a plain user, exports only what she may
read, without the Bcc she may not see; charlie, the outsider, gets nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import mailbox
import re
import uuid
import zipfile
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from archive.actions import index_pending
from archive.models import Message
from compliance import exports
from compliance.models_export import Export
from infra.storage import get_store
from search import get_backend, reset_backend
from tenants.api_tokens import create_api_token
from tenants.models import AuditEvent
from tests.archive_support import archive
from tests.conftest import membership_of
from tests.search_support import elasticsearch_url  # noqa: F401 - the session's Elasticsearch API

pytestmark = pytest.mark.django_db


def original(message_id: str, subject: str, to: str, bcc: str = "", body: str = "Hello.") -> str:
    return (
        f"From: Sam Sender <sam@fabrikam.com>\r\nTo: {to}\r\n"
        + (f"Bcc: {bcc}\r\n" if bcc else "")
        + f"Subject: {subject}\r\nDate: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: <{message_id}>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\n{body}\r\n"
    )


def journal(message_id: str, subject: str, to: str, bcc: str = "", body: str = "Hello.") -> bytes:
    """A journal report carrying `original(...)`, its envelope naming To (and Bcc)."""
    envelope = f"To: {to}\r\n" + (f"Bcc: {bcc}\r\n" if bcc else "")
    return (
        f"From: sam@fabrikam.com\r\nTo: journal@archive.archiva.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <report-{message_id}>\r\nX-MS-Journal-Report:\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\nMIME-Version: 1.0\r\n\r\n'
        "--b0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"Sender: sam@fabrikam.com\r\nSubject: {subject}\r\nMessage-Id: <{message_id}>\r\n{envelope}"
        f"--b0\r\nContent-Type: message/rfc822\r\n\r\n{original(message_id, subject, to, bcc, body)}\r\n--b0--\r\n"
    ).encode()


@pytest.fixture(params=["embedded", "elasticsearch"])
def search_engine(request, settings):
    """The search backend the export scans: the embedded default, or Elasticsearch (an index of this test's own)."""
    if request.param == "elasticsearch":
        settings.ARCHIVA_SEARCH_URL = request.getfixturevalue("elasticsearch_url")
        settings.ARCHIVA_SEARCH_INDEX = f"archiva-test-exports-{uuid.uuid4().hex[:10]}-messages"
        settings.ARCHIVA_SEARCH_REFRESH = "wait_for"
    reset_backend()
    backend = get_backend()
    yield backend
    if request.param == "elasticsearch":
        backend.drop_index()  # type: ignore[attr-defined]  # the Elasticsearch backend's own, not the interface's
    reset_backend()


@pytest.fixture
def mail(org):
    """Three messages: two erin received (one Bcc henry, one with a "From " line in its body), one she did not."""
    archive(org.tenant, journal("q1@fabrikam.com", "Quarterly numbers", "erin@contoso.com", bcc="henry@contoso.com"))
    archive(
        org.tenant, journal("q2@fabrikam.com", "Quarterly follow-up", "erin@contoso.com", body="From here on.\r\nBye")
    )
    archive(org.tenant, journal("q3@fabrikam.com", "Quarterly secret", "frank@contoso.com"))
    index_pending()
    get_backend().refresh()
    return {m.message_id: m for m in Message.objects.filter(tenant=org.tenant)}


def export_now(user, query: str, export_format: str = "eml-zip") -> Export:
    export = exports.create_export(membership_of(user), query, export_format)
    assert exports.build_export(export.pk) == Export.State.DONE, Export.objects.get(pk=export.pk).error
    return Export.objects.get(pk=export.pk)


def downloaded(client, user, export: Export) -> zipfile.ZipFile:
    client.force_login(user)
    response = client.get(reverse("export-download", args=[export.public_id]))
    assert response.status_code == 200, response
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def manifest_of(archive_zip: zipfile.ZipFile) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(archive_zip.read("manifest.csv").decode())))


def test_an_eml_zip_holds_each_original_and_its_hash_in_the_manifest(client, org, search_engine, mail):
    export = export_now(org.auditor, "subject:quarterly")
    archive_zip = downloaded(client, org.auditor, export)
    rows = manifest_of(archive_zip)
    assert {r["subject"] for r in rows} == {"Quarterly numbers", "Quarterly follow-up", "Quarterly secret"}
    for row in rows:
        data = archive_zip.read(row["file"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert message_from_bytes(data)["Subject"] == row["subject"]
        assert row["sources"].startswith("journal ")
    assert export.manifest_sha256 == hashlib.sha256(archive_zip.read("manifest.csv")).hexdigest()
    assert (export.done, export.total) == (3, 3)
    numbers = next(r for r in rows if r["subject"] == "Quarterly numbers")
    assert "henry@contoso.com" in numbers["to"]  # an auditor sees every recipient


def test_an_mbox_export_parses_back_to_the_same_messages(client, org, mail, tmp_path: Path):
    export = export_now(org.owner, "subject:quarterly", "mbox")
    archive_zip = downloaded(client, org.owner, export)
    (tmp_path / "export.mbox").write_bytes(archive_zip.read("messages.mbox"))
    parsed = list(mailbox.mbox(tmp_path / "export.mbox"))
    rows = manifest_of(archive_zip)
    assert [m["Message-ID"] for m in parsed] == [f"<{mail_id}>" for mail_id in (mail_id_of(r, mail) for r in rows)]
    by_id = {m["Message-ID"]: m for m in parsed}
    follow_up = by_id["<q2@fabrikam.com>"].get_payload()
    # mboxrd quoting: ">From" in the file; the manifest hashes the message with it unquoted.
    assert ">From here on." in follow_up
    for row in rows:
        assert row["file"] == "messages.mbox"
        message = by_id[f"<{mail_id_of(row, mail)}>"]
        unquoted = re.sub(rb"(?m)^>(>*From )", rb"\1", message.as_bytes().split(b"\n\n", 1)[1])
        assert unquoted.replace(b"\r\n", b"\n").strip() in (
            exports.documents.read_original(Message.objects.get(pk=row["id"])).replace(b"\r\n", b"\n")
        )


def mail_id_of(row: dict[str, str], mail: dict[str, Message]) -> str:
    return next(mid for mid, m in mail.items() if str(m.pk) == row["id"])


def test_a_plain_user_exports_only_her_mail_and_no_bcc_she_may_not_see(client, org, search_engine, mail):
    export = export_now(org.user, "quarterly")
    archive_zip = downloaded(client, org.user, export)
    rows = manifest_of(archive_zip)
    assert {r["subject"] for r in rows} == {"Quarterly numbers", "Quarterly follow-up"}
    numbers = next(r for r in rows if r["subject"] == "Quarterly numbers")
    data = archive_zip.read(numbers["file"])
    assert b"henry" not in data and "henry" not in numbers["to"]
    assert hashlib.sha256(data).hexdigest() == numbers["sha256"]
    assert message_from_bytes(data)["Message-ID"] == "<q1@fabrikam.com>"
    assert all(r["sources"] == "" for r in rows)  # the journal's queue ids are not hers to see


def test_the_progress_api_reports_state_counts_and_the_download(client, org, mail):
    _token, secret = create_api_token(membership_of(org.admin), "ediscovery")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    response = client.post(
        "/api/v1/exports", {"q": "subject:quarterly", "format": "eml-zip"}, content_type="application/json", **auth
    )
    assert response.status_code == 201
    assert response.json()["state"] == "pending"
    export_id = response.json()["id"]
    pending = client.get(f"/api/v1/exports/{export_id}", **auth).json()
    assert (pending["state"], pending["done"], pending["download_url"]) == ("pending", 0, None)
    exports.build_export(Export.objects.get(public_id=export_id).pk)
    done = client.get(f"/api/v1/exports/{export_id}", **auth).json()
    assert (done["state"], done["done"], done["total"]) == ("done", 3, 3)
    assert re.fullmatch(r"[0-9a-f]{64}", done["manifest_sha256"])
    assert client.get(done["download_url"]).status_code == 401  # no session, no token
    data = b"".join(client.get(done["download_url"], **auth).streaming_content)
    assert hashlib.sha256(zipfile.ZipFile(io.BytesIO(data)).read("manifest.csv")).hexdigest() == done["manifest_sha256"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"q": "x", "format": "pst"}, "format must be one of"), ({"q": "(unclosed", "format": "mbox"}, "q: ")],
)
def test_a_bad_request_is_refused_naming_the_problem(client, org, body, reason):
    _token, secret = create_api_token(membership_of(org.owner), "t")
    response = client.post(
        "/api/v1/exports", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_only_the_creator_and_admins_see_and_download_an_export(client, org, outsider, mail):
    export = export_now(org.user, "quarterly")
    for user, status in [(org.user, 200), (org.admin, 200), (org.owner, 200), (org.auditor, 404), (outsider, 404)]:
        client.force_login(user)
        assert client.get(reverse("export-download", args=[export.public_id])).status_code == status, user
        _token, secret = create_api_token(membership_of(user), f"t-{user.pk}")
        api = client.get(f"/api/v1/exports/{export.public_id}", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert api.status_code == status
    client.force_login(org.auditor)
    assert str(export.public_id) not in client.get(reverse("exports")).content.decode()
    client.force_login(org.admin)
    page = client.get(reverse("exports")).content.decode()
    assert export.manifest_sha256 in page and "erin@contoso.com" in page


def test_creation_finishing_and_each_download_are_audited_with_the_manifest_hash(client, org, mail):
    export = export_now(org.auditor, "subject:quarterly")
    downloaded(client, org.auditor, export)
    downloaded(client, org.auditor, export)
    events = AuditEvent.objects.filter(tenant=org.tenant, target=f"export {export.public_id}").order_by("id")
    assert [e.action for e in events] == ["export-created", "export-finished", "export-downloaded", "export-downloaded"]
    assert events[0].detail["query"] == "subject:quarterly"
    assert all(e.detail["manifest_sha256"] == export.manifest_sha256 for e in events[1:])
    assert {e.user_id for e in events} == {org.auditor.pk}
    client.force_login(org.auditor)
    assert export.manifest_sha256 in client.get(reverse("audit")).content.decode()


def test_an_export_expires_after_7_days_and_its_file_is_deleted(client, org, mail):
    export = export_now(org.owner, "subject:quarterly")
    store = get_store()
    assert store.exists(exports.exports_bucket(), export.storage_key)
    assert exports.expire_exports() == 0
    Export.objects.filter(pk=export.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert exports.expire_exports() == 1
    assert not store.exists(exports.exports_bucket(), export.storage_key)
    client.force_login(org.owner)
    assert client.get(reverse("export-download", args=[export.public_id])).status_code == 410
    assert Export.objects.get(pk=export.pk).state == Export.State.EXPIRED
    assert exports.expire_exports() == 0


def test_the_search_page_offers_the_export_and_the_form_starts_one(client, org, mail):
    client.force_login(org.owner)
    page = client.get(reverse("search"), {"q": "subject:quarterly"}).content.decode()
    assert 'id="export-form"' in page and 'value="subject:quarterly"' in page
    response = client.post(reverse("export-new"), {"q": "subject:quarterly", "format": "mbox"})
    assert response.status_code == 302
    export = Export.objects.get(tenant=org.tenant)
    assert (export.query, export.format, export.state) == ("subject:quarterly", "mbox", "pending")
    assert "Refresh progress" in client.get(reverse("exports")).content.decode()


def test_a_stored_object_that_fails_its_check_is_named_in_the_manifest(client, org, mail, settings):
    damaged = mail["q3@fabrikam.com"]
    path = settings.DATA_DIR / "buckets" / org.tenant.bucket / damaged.original_key
    path.chmod(0o600)
    path.write_bytes(path.read_bytes().replace(b"Hello.", b"Jello."))
    rows = manifest_of(downloaded(client, org.owner, export_now(org.owner, "subject:quarterly")))
    bad = next(r for r in rows if r["id"] == str(damaged.pk))
    assert bad["file"] == "" and bad["error"].startswith("unreadable:")
    assert len([r for r in rows if r["file"]]) == 2


def test_a_build_the_broker_lost_or_whose_worker_died_is_published_and_claimed_again(org, mail):
    membership = membership_of(org.owner)
    lost = exports.create_export(membership, "subject:quarterly", "eml-zip")
    assert exports.requeue_stranded(timedelta(minutes=5)) == 0  # young: its task may still be on the way
    Export.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    assert exports.requeue_stranded(timedelta(minutes=5)) == 1
    died = exports.create_export(membership, "subject:secret", "mbox")
    Export.objects.filter(pk=died.pk).update(state=Export.State.RUNNING, heartbeat_at=timezone.now())
    assert exports.build_export(died.pk) == "not claimed"  # another worker is at it
    Export.objects.filter(pk=died.pk).update(heartbeat_at=timezone.now() - exports.STALE_AFTER - timedelta(seconds=1))
    assert exports.build_export(died.pk) == Export.State.DONE
    assert exports.build_export(died.pk) == "not claimed"  # done is done
    assert Export.objects.get(pk=died.pk).total == 1


def test_a_selection_exports_only_the_ids_given_that_the_member_may_read(client, org, mail):
    _token, secret = create_api_token(membership_of(org.user), "selection")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    wanted = [mail["q3@fabrikam.com"].pk, mail["q1@fabrikam.com"].pk, 999_999_999]  # frank's, hers, nobody's
    response = client.post(
        "/api/v1/exports", {"ids": wanted, "format": "eml-zip"}, content_type="application/json", **auth
    )
    assert response.status_code == 201
    export = Export.objects.get(public_id=response.json()["id"])
    exports.build_export(export.pk)
    rows = manifest_of(downloaded(client, org.user, Export.objects.get(pk=export.pk)))
    assert [r["id"] for r in rows] == [str(mail["q1@fabrikam.com"].pk)]
    assert AuditEvent.objects.get(target=f"export {export.public_id}", action="export-created").detail["selection"] == 3
    bad = client.post("/api/v1/exports", {"ids": "1,2", "format": "mbox"}, content_type="application/json", **auth)
    assert bad.status_code == 400 and "ids must be a list" in bad.json()["error"]


def test_the_page_form_names_a_bad_query(client, org):
    client.force_login(org.user)
    response = client.post(reverse("export-new"), {"q": "(unclosed", "format": "eml-zip"})
    assert response.status_code == 400
    assert 'id="export-error"' in response.content.decode()
    assert not Export.objects.filter(tenant=org.tenant).exists()


def test_on_s3_the_export_goes_to_the_regions_exports_bucket_and_expires_from_it(use_s3, client, org, mail):
    export = export_now(org.owner, "subject:quarterly")
    assert exports.exports_bucket() == "archiva-us-exports"  # the region's, beside the tenants' buckets
    head = use_s3.client.head_object(Bucket=exports.exports_bucket(), Key=export.storage_key)
    assert head["ContentLength"] == export.size
    assert export.storage_key.startswith(f"{org.tenant.public_id.hex}/")
    rows = manifest_of(downloaded(client, org.owner, export))
    assert len(rows) == 3 and all(r["sha256"] for r in rows)
    Export.objects.filter(pk=export.pk).update(expires_at=timezone.now())
    assert exports.expire_exports() == 1
    assert not use_s3.exists(exports.exports_bucket(), export.storage_key)
