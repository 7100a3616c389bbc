"""Property tests: whatever bytes arrive, the parser returns, keeps the raw message, and never hits its last resort.

`parse_report` catches everything as a last line of defence and records
"parser failure: ..." — so the real property is that no input gets there.
"""

from __future__ import annotations

import base64
import hashlib
import quopri
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from archive.parser.journal import parse_envelope, parse_report
from archive.parser.parsed import ParsedReport
from archive.parser.rawmime import decode_header_value, split_multipart
from tests.data_gen import wrap_as_journal

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CORPUS_BYTES = [path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))]

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "koi8-r", "shift_jis", "gb2312", "utf-16", "utf-7",
            "x-unknown", "rot13", "base64", "idna", "", "utf-8'en'"]  # fmt: skip
LEAF_TYPES = ["text/plain", "text/html", "text/csv", "application/octet-stream", "image/png", "application/pdf",
              "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "application/ms-tnef",
              "message/rfc822", "text/rtf", "application/zip"]  # fmt: skip
CTES = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus", ""]


def assert_sound(report: ParsedReport, raw: bytes) -> None:
    assert isinstance(report, ParsedReport)
    assert not [p for p in report.problems if p.startswith("parser failure")], report.problems
    assert report.content_sha256 == hashlib.sha256(report.original).hexdigest()
    if not report.is_journal:
        assert report.original == raw
    assert all(r.address == r.address.lower() for r in report.envelope_recipients)
    assert report.date is None or report.date.utcoffset().total_seconds() == 0


def _encode_body(data: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data)
    if cte == "quoted-printable":
        return quopri.encodestring(data)
    return data


@st.composite
def leaf(draw) -> bytes:
    ctype = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    text = draw(st.text(max_size=200))
    payload = draw(st.one_of(st.binary(max_size=300), st.just(text.encode("utf-8", "surrogatepass"))))
    if ctype == "message/rfc822":
        payload = (
            b"Subject: inner " + text.encode("utf-8", "surrogatepass")[:40].replace(b"\n", b" ") + b"\r\n\r\n" + payload
        )
    head = f'Content-Type: {ctype}; charset="{charset}"\r\nContent-Transfer-Encoding: {cte}\r\n'
    if draw(st.booleans()):
        name = draw(
            st.sampled_from(["a.pdf", "b.docx", "winmail.dat", "=?utf-8?B?w7w=?=.txt", "x.eml", "", "n\u00e4me.csv"])
        )
        head += f'Content-Disposition: attachment; filename="{name}"\r\n'
    return head.encode("utf-8", "surrogatepass") + b"\r\n" + _encode_body(payload, cte)


def multipart(children: st.SearchStrategy) -> st.SearchStrategy:
    @st.composite
    def build(draw) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed", "report"]))
        boundary = draw(st.text("abcXYZ0123-_=", min_size=1, max_size=20))
        parts = draw(st.lists(children, max_size=4))
        broken = draw(st.sampled_from(["ok", "no-close", "wrong-boundary", "no-delimiters", "lf"]))
        sep = "--" + (boundary + "x" if broken == "wrong-boundary" else boundary)
        body = b"preamble\r\n" + b"".join(sep.encode() + b"\r\n" + part + b"\r\n" for part in parts)
        if broken not in ("no-close", "no-delimiters"):
            body += sep.encode() + b"--\r\n"
        if broken == "no-delimiters":
            body = b"".join(parts)
        if broken == "lf":
            body = body.replace(b"\r\n", b"\n")
        return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body

    return build()


MIME_TREES = st.recursive(leaf(), multipart, max_leaves=8)


@st.composite
def message(draw) -> bytes:
    subject = draw(
        st.one_of(st.text(max_size=60), st.sampled_from(["=?utf-8?B?w7xiZXI=?=", "=?bogus?Q?x?=", "=?utf-8?B?!!?="]))
    )
    headers = [
        b"From: "
        + draw(st.sampled_from([b"Alice <ALICE@x.com>", b"", b"<>", b"a@b, c@d", b"\xff\xfe@x", b"undisclosed:;"])),
        b"To: " + draw(st.sampled_from([b"b@y.com", b'"Doe, J" <j@y.com>', b"", b"\x00"])),
        b"Subject: " + subject.encode("utf-8", "surrogatepass").replace(b"\n", b" ").replace(b"\r", b" "),
        b"Date: "
        + draw(
            st.sampled_from([b"Mon, 02 Mar 2026 09:30:00 +0000", b"garbage", b"", b"Mon, 32 Foo 99999 99:99:99 +9999"])
        ),
        b"Message-ID: " + draw(st.sampled_from([b"<a@b>", b"", b"<<>>", b"no brackets"])),
    ]
    return b"\r\n".join(headers) + b"\r\n" + draw(MIME_TREES)


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes_are_archived_as_themselves(raw: bytes):
    assert_sound(parse_report(raw), raw)


@FUZZ
@given(message())
def test_random_mime_trees_parse(raw: bytes):
    assert_sound(parse_report(raw), raw)


@FUZZ
@given(message(), st.sampled_from(["7bit", "binary", "8bit"]))
def test_random_mime_trees_unwrap_byte_for_byte_from_a_journal_report(raw: bytes, cte: str):
    report = parse_report(wrap_as_journal(raw, recipients=["bob@fabrikam.com"], cte=cte))
    assert_sound(report, raw)
    assert report.is_journal and report.original == raw
    assert [(r.address, r.kind) for r in report.envelope_recipients] == [("bob@fabrikam.com", "to")]


@FUZZ
@given(st.sampled_from(CORPUS_BYTES), st.data())
def test_truncated_reports_keep_a_prefix_of_the_original(raw: bytes, data):
    cut = raw[: data.draw(st.integers(0, len(raw)))]
    report = parse_report(cut)
    assert_sound(report, cut)
    assert report.original in cut


@FUZZ
@given(st.sampled_from(CORPUS_BYTES), st.data())
def test_corrupted_reports_parse(raw: bytes, data):
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 20))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    mutated = bytes(mutated)
    assert_sound(parse_report(mutated), mutated)


@FUZZ
@given(st.sampled_from(CORPUS_BYTES), st.sampled_from(CHARSETS + ["utf-8", "us-ascii"]), st.sampled_from(CTES))
def test_reports_with_wrong_charsets_and_encodings_parse(raw: bytes, charset: str, cte: str):
    mutated = raw.replace(b'charset="us-ascii"', f'charset="{charset}"'.encode())
    mutated = mutated.replace(b'charset="utf-8"', f'charset="{charset}"'.encode())
    mutated = mutated.replace(b"Content-Transfer-Encoding: 7bit", f"Content-Transfer-Encoding: {cte}".encode())
    report = parse_report(mutated)
    assert_sound(report, mutated)
    assert report.is_journal == (b"X-MS-Journal-Report" in mutated or b"ExJournalReport" in mutated)


@FUZZ
@given(st.text(max_size=500))
def test_envelope_lines_never_raise(text: str):
    envelope = parse_envelope(text)
    assert all(r.address == r.address.lower() and "@" in r.address for r in envelope.recipients)


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                "To: ",
                "Bcc: ",
                "Recipient: ",
                ", Expanded: ",
                ", Forwarded: ",
                "a@b.c",
                "X@Y.Z",
                ",",
                "\n",
                " ",
                "<",
                ">",
                '"',
                ":",
            ]
        ),
        max_size=40,
    )
)
def test_envelope_recipient_grammar_fragments_never_raise(pieces: list[str]):
    parse_envelope("".join(pieces))


@FUZZ
@given(st.binary(max_size=300))
def test_header_decoding_never_raises(raw: bytes):
    assert isinstance(decode_header_value(raw), str)
    assert isinstance(decode_header_value(b"=?utf-8?B?" + raw + b"?= =?x?Q?" + raw + b"?="), str)


@FUZZ
@given(st.binary(max_size=500), st.text("ab-", min_size=1, max_size=4))
def test_split_multipart_parts_are_slices_of_the_body(body: bytes, boundary: str):
    assume(boundary.strip())
    parts, _closed = split_multipart(body, boundary)
    assert all(part in body for part in parts)
