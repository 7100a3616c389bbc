"""Import of uploaded mail: an mbox and a ZIP of .eml files become
searchable through the journal's durable path, merge by Message-ID with a
journal copy already archived, list what they could not read while
importing the rest, and refuse a PST or a file of neither kind with a 4xx
that says why.  Owners and admins import; others 403, charlie nothing.
"""

from __future__ import annotations

import io
import mailbox
import os
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from archive.access import sources_for
from archive.actions import index_pending
from archive.models import Message
from archive.processing import process_deliveries
from compliance import imports
from compliance.models_export import Import
from ingest.models import Delivery
from tenants.api_tokens import create_api_token
from tenants.models import AuditEvent
from tests.archive_support import archive, backend_fixture, search_ids
from tests.conftest import membership_of
from tests.test_exports import journal

pytestmark = pytest.mark.django_db
backend = backend_fixture


def eml(message_id: str, subject: str, to: str = "erin@contoso.com", body: str = "Hello.") -> bytes:
    return (
        f"From: Olga Old <olga@northwind.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 04 Feb 2020 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\n\r\n{body}\r\n"
    ).encode()


def mbox_file(tmp_path: Path, messages: list[bytes]) -> bytes:
    """An mbox written by Python's mailbox module (mboxo, LF line ends)."""
    box = mailbox.mbox(tmp_path / "upload.mbox")
    for data in messages:
        box.add(data.replace(b"\r\n", b"\n"))
    box.flush()
    box.close()
    return (tmp_path / "upload.mbox").read_bytes()


def zip_file(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_zip:
        for name, data in entries.items():
            archive_zip.writestr(name, data)
    return buffer.getvalue()


def run(started: Import) -> Import:
    """The task, then the worker on what it stored (archive and index), as in production."""
    assert imports.run_import(started.pk) == Import.State.DONE, Import.objects.get(pk=started.pk).error
    stored = Delivery.objects.filter(tenant_id=started.tenant_id, status=Delivery.Status.STORED)
    process_deliveries(list(stored.values_list("pk", flat=True)), index=True)
    index_pending()
    return Import.objects.get(pk=started.pk)


def upload(org, name: str, data: bytes) -> Import:
    return imports.start_import(membership_of(org.admin), SimpleUploadedFile(name, data))


def test_an_mbox_import_becomes_searchable_with_its_source(org, backend, tmp_path):
    data = mbox_file(tmp_path, [eml("m1@northwind.example", "Contract draft"), eml("m2@northwind.example", "Invoice")])
    done = run(upload(org, "olga-2020.mbox", data))
    assert (done.format, done.done, done.stored, done.error_count) == ("mbox", 2, 2, 0)
    assert len(search_ids(backend, org.tenant, "subject:contract")) == 1
    assert len(search_ids(backend, org.tenant, "from:olga@northwind.example")) == 2
    message = Message.objects.get(tenant=org.tenant, message_id__contains="m1@northwind.example")
    assert {"source": "upload", "file": "olga-2020.mbox"}.items() <= sources_for(membership_of(org.owner), message)[
        0
    ].items()
    assert not Path(done.spool_path or "/nonexistent").exists()


def test_a_zip_import_lists_a_broken_message_and_imports_the_others(org, backend):
    data = zip_file(
        {
            "2020/a.eml": eml("z1@northwind.example", "Alpha"),
            "2020/b.eml": b"this is not a message at all\r\n",
            "2020/c.eml": eml("z3@northwind.example", "Gamma"),
            "notes.txt": b"read me",
        }
    )
    done = run(upload(org, "export.zip", data))
    assert (done.format, done.done, done.stored, done.error_count) == ("eml-zip", 4, 2, 2)
    assert {e["item"]: e["error"] for e in done.errors} == {
        "2020/b.eml": "not an email message: no From, Date or Message-ID header",
        "notes.txt": "not an .eml file",
    }
    assert len(search_ids(backend, org.tenant, "subject:alpha OR subject:gamma")) == 2


def test_a_message_already_archived_from_the_journal_is_merged_not_duplicated(org, backend, tmp_path):
    archive(org.tenant, journal("q1@fabrikam.com", "Quarterly numbers", "erin@contoso.com"))
    copy = (
        b"From: Sam Sender <sam@fabrikam.com>\r\nTo: erin@contoso.com\r\nSubject: Quarterly numbers\r\n"
        b"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: <q1@fabrikam.com>\r\n\r\nHello.\r\n"
    )
    done = run(upload(org, "erin.mbox", mbox_file(tmp_path, [copy, eml("new@northwind.example", "New")])))
    assert (done.stored, done.already_archived) == (1, 1)
    assert Message.objects.filter(tenant=org.tenant, message_id__contains="q1@fabrikam.com").count() == 1
    merged = Message.objects.get(tenant=org.tenant, message_id__contains="q1@fabrikam.com")
    kinds = [s["source"] for s in sources_for(membership_of(org.owner), merged)]
    assert sorted(kinds) == ["journal", "upload"]
    assert Message.objects.filter(tenant=org.tenant).count() == 2


def test_the_same_file_imported_twice_stores_nothing_new(org, tmp_path):
    data = mbox_file(tmp_path, [eml("twice@northwind.example", "Twice")])
    run(upload(org, "a.mbox", data))
    again = run(upload(org, "a-again.mbox", data))
    assert (again.stored, again.already_archived) == (0, 1)
    assert Delivery.objects.filter(tenant=org.tenant).count() == 1


def test_mboxrd_quoted_from_lines_are_unquoted(org, tmp_path):
    raw = eml("quoted@northwind.example", "Quoted", body="see below\r\n>From the archive\r\nend")
    path = tmp_path / "rd.mbox"
    path.write_bytes(
        b"From olga@northwind.example Tue Feb  4 10:00:00 2020\n" + raw.replace(b">From", b">>From") + b"\n"
    )
    [found, _progress] = list(imports.mbox_messages(path))
    assert isinstance(found, imports.Found) and found.data == raw


@pytest.mark.parametrize(
    ("name", "data", "status", "reason"),
    [
        ("outlook.pst", b"PK\x03\x04 renamed", 400, "not an Outlook .pst file"),
        ("notes.txt", b"Dear diary", 400, "not an mbox"),
        ("broken.zip", b"PK\x03\x04" + b"\0" * 40, 400, "not a readable ZIP file"),
        ("empty.mbox", b"", 400, "the file is empty"),
    ],
)
def test_an_upload_of_neither_kind_is_refused_saying_why(client, org, name, data, status, reason):
    _token, secret = create_api_token(membership_of(org.owner), "import")
    response = client.post(
        "/api/v1/imports", {"file": SimpleUploadedFile(name, data)}, HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == status
    assert reason in response.json()["error"]
    assert not Import.objects.filter(tenant=org.tenant).exists()


def test_the_api_and_page_start_an_import_audited_and_show_its_progress(client, org, tmp_path):
    _token, secret = create_api_token(membership_of(org.admin), "import")
    data = mbox_file(tmp_path, [eml("api@northwind.example", "Via API")])
    response = client.post(
        "/api/v1/imports", {"file": SimpleUploadedFile("api.mbox", data)}, HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 201
    assert response.json()["state"] == "pending"
    started = Import.objects.get(public_id=response.json()["id"])
    run(started)
    status = client.get(f"/api/v1/imports/{started.public_id}", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert (status["state"], status["percent"], status["stored"]) == ("done", 100, 1)
    events = AuditEvent.objects.filter(tenant=org.tenant, target=f"import {started.public_id}").order_by("id")
    assert [e.action for e in events] == ["import-started", "import-finished"]
    assert events[0].token_id is not None and events[1].detail["stored"] == 1
    client.force_login(org.owner)
    page = client.post(reverse("import"), {"file": SimpleUploadedFile("page.mbox", data)})
    assert page.status_code == 302
    assert "page.mbox" in client.get(reverse("import")).content.decode()


def test_only_owners_and_admins_import_and_nobody_sees_another_tenants(client, org, outsider, tmp_path):
    started = upload(org, "x.mbox", mbox_file(tmp_path, [eml("x@northwind.example", "X")]))
    for user in (org.auditor, org.user):
        client.force_login(user)
        assert client.get(reverse("import")).status_code == 403
        assert client.post(reverse("import"), {"file": SimpleUploadedFile("y.mbox", b"From x\n")}).status_code == 403
        _token, secret = create_api_token(membership_of(user), f"t-{user.pk}")
        auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        assert client.get(f"/api/v1/imports/{started.public_id}", **auth).status_code == 403
    _token, secret = create_api_token(membership_of(outsider), "charlie")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get(f"/api/v1/imports/{started.public_id}", **auth).status_code == 404
    client.force_login(outsider)
    assert "x.mbox" not in client.get(reverse("import")).content.decode()


def test_a_large_upload_streams_to_the_spool_and_imports_every_message(client, org, tmp_path, settings):
    """Beyond 2.5 MB Django's upload handlers write to disk (`web.imports.SpooledUpload`), not memory."""
    padding = "x" * 76 + "\r\n"
    messages = [eml(f"big-{n}@northwind.example", f"Big {n}", body=padding * 130) for n in range(300)]
    data = mbox_file(tmp_path, messages)
    assert len(data) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    _token, secret = create_api_token(membership_of(org.owner), "import")
    response = client.post(
        "/api/v1/imports", {"file": SimpleUploadedFile("big.mbox", data)}, HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 201
    started = Import.objects.get(public_id=response.json()["id"])
    assert Path(started.spool_path).read_bytes() == data
    assert Path(started.spool_path).parent == Path(settings.ARCHIVA_SPOOL_DIR) / "imports"
    assert not list((Path(settings.ARCHIVA_SPOOL_DIR) / "uploads").iterdir())  # Django's temporary is gone
    done = run(started)
    assert (done.done, done.stored, done.error_count, done.position, done.extent) == (300, 300, 0, len(data), len(data))


PST = Path(__file__).parent / "data" / "three-messages.pst"  # how it was made: data/make_three_messages_pst.py


@pytest.fixture
def readpst():
    if imports.readpst() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("readpst is missing: apt-get install pst-utils (.ci/run does)")
        pytest.skip("readpst is missing: apt-get install pst-utils")


def test_a_pst_import_becomes_searchable(client, org, backend, readpst):
    _token, secret = create_api_token(membership_of(org.owner), "import")
    response = client.post(
        "/api/v1/imports",
        {"file": SimpleUploadedFile("erin.pst", PST.read_bytes())},
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 201 and response.json()["format"] == "pst"
    done = run(Import.objects.get(public_id=response.json()["id"]))
    assert (done.state, done.stored, done.error_count, done.position == done.extent > 0) == ("done", 3, 0, True)
    assert len(search_ids(backend, org.tenant, "subject:pst from:olga@northwind.example")) == 3
    assert len(search_ids(backend, org.tenant, '"Body of PST message 2"', addresses=["erin@contoso.com"])) == 1
    message = Message.objects.get(tenant=org.tenant, message_id__contains="pst-1@northwind.example")
    assert sources_for(membership_of(org.owner), message)[0]["file"] == "erin.pst"


def test_a_damaged_pst_fails_with_readpsts_reason(org, readpst):
    damaged = PST.read_bytes()[:4096]
    started = upload(org, "damaged.pst", damaged)
    assert imports.run_import(started.pk) == Import.State.FAILED
    failed = Import.objects.get(pk=started.pk)
    assert failed.error.startswith("RuntimeError: readpst could not read the .pst (exit 1): Could not get root record")
    assert failed.stored == 0 and not Path(started.spool_path).exists()


def test_without_readpst_a_pst_is_refused_with_415_saying_why(client, org, monkeypatch):
    monkeypatch.setattr(imports, "readpst", lambda: None)
    _token, secret = create_api_token(membership_of(org.owner), "import")
    response = client.post(
        "/api/v1/imports",
        {"file": SimpleUploadedFile("outlook.pst", PST.read_bytes())},
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 415
    assert response.json()["error"].startswith("PST import is not available on this server: readpst")
