"""Messages at the parser's bounds, on the message page and in search.

A body too large or a structure too deep to read whole is shown as far as it
could be read, with a note saying so and stating the bound up to which its
text is searchable; a message with thousands of attachments lists them from
what was kept when it was archived, without parsing the message again.
"""

from __future__ import annotations

import base64

from archive.models import Message
from archive.parser import extract, mime
from tests.archive_support import archive, backend_fixture, search_ids  # noqa: F401 (the `backend` fixture)
from tests.data_gen import wrap_as_journal

MB = 1024 * 1024
HEAD = (
    "From: Sam Sender <sam@fabrikam.com>\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n"
    "Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: <{subject}@fabrikam.com>\r\nMIME-Version: 1.0\r\n"
)


def archived_message(org, original: bytes) -> Message:
    delivery = archive(org.tenant, wrap_as_journal(original, recipients=["alice@contoso.com"]))
    assert delivery.message_id, delivery.error
    return Message.objects.get(pk=delivery.message_id)


def page(client, org, message: Message) -> str:
    client.force_login(org.owner)
    response = client.get(f"/messages/{message.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_body_over_50_mb_on_one_line_says_so_and_its_start_is_searchable(org, client, backend):
    line = b"frontword " + b"x" * (51 * MB) + b" tailword"
    original = HEAD.format(subject="huge").encode() + b"Content-Type: text/plain\r\n\r\n" + line + b"\r\n"
    message = archived_message(org, original)
    html = page(client, org, message)
    assert 'id="body-note"' in html
    assert "larger than 50 MB: only its first 1,000,000 characters are shown and searchable" in html
    assert "frontword" in html
    assert search_ids(backend, org.tenant, "frontword") == [message.pk]
    assert search_ids(backend, org.tenant, "tailword") == []  # past the bound


def test_a_message_nested_1000_levels_deep_is_shown_as_text_with_a_note_and_is_searchable(org, client, backend):
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(1000))
    original = (
        HEAD.format(subject="deep").encode() + nested + b"Content-Type: text/plain\r\n\r\nthe innermost needle\r\n"
    )
    message = archived_message(org, original)
    html = page(client, org, message)
    assert 'id="body-note"' in html and "could not be taken apart" in html and "1,000,000 characters" in html
    assert "the innermost needle" in html
    assert "Content-Type" not in html.split('id="body-heading"')[1].split("</section>")[0]
    assert search_ids(backend, org.tenant, "innermost") == [message.pk]


def many_attachments(count: int) -> bytes:
    parts = b"".join(
        b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="f%d.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nAAAA%04d\r\n" % (n, n)
        for n in range(1, count + 1)
    )
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nSee the files.\r\n" + parts + b"--b--\r\n"
    return HEAD.format(subject="files").encode() + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body


def no_reparse(monkeypatch) -> None:
    """From here on, fail the test if anything takes the attachments out of the message again."""

    def reparsed(*args, **kwargs):
        raise AssertionError("the attachments were parsed again on view")

    monkeypatch.setattr(mime, "attachments", reparsed)
    monkeypatch.setattr(extract.Extractor, "_part_attachment", reparsed)


def test_a_message_with_thousands_of_attachments_lists_them_without_parsing_them_again(org, client, monkeypatch):
    message = archived_message(org, many_attachments(2000))
    assert len(message.attachment_list) == 2000
    with monkeypatch.context() as patched:
        no_reparse(patched)
        html = page(client, org, message)
    assert html.count('class="muted">application/octet-stream') == 2000
    assert f'href="/messages/{message.pk}/attachments/2000"' in html and "f2000.bin" in html
    assert "See the files." in html
    # The list's numbers are the download's.
    response = client.get(f"/messages/{message.pk}/attachments/2000")
    assert response.status_code == 200 and b"".join(response) == base64.b64decode(b"AAAA2000")


def test_an_older_message_without_a_kept_list_computes_it_on_its_first_view_and_keeps_it(org, client, monkeypatch):
    message = archived_message(org, many_attachments(3))
    kept = message.attachment_list
    Message.objects.filter(pk=message.pk).update(attachment_list=None)  # as migration 0002 leaves old rows
    assert "f3.bin" in page(client, org, message)
    message.refresh_from_db()
    assert message.attachment_list == kept
    with monkeypatch.context() as patched:
        no_reparse(patched)
        assert "f3.bin" in page(client, org, message)


def test_the_outsider_gets_no_message_page(org, outsider, client):
    message = archived_message(org, many_attachments(3))
    client.force_login(outsider)
    assert client.get(f"/messages/{message.pk}/").status_code == 404
