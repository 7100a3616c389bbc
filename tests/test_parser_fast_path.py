"""The single-part fast path of `archive.parser.message.parse_message` gives
exactly what the `email` parser gives, or steps aside for it.

The fast path parses the head with the `email` parser and takes the rest as
the payload; these compare the two Message objects field by field on every
corpus message (reports and their originals) and on heads and bodies made to
find the edges: line endings of every kind, no body, no empty line, a
non-header line in the head, 8-bit bytes, multipart and message/* types.
"""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser

import pytest

from archive.parser.journal import parse_report
from archive.parser.message import _single_part, parse_message
from tests.archive_support import corpus, corpus_names


def full(raw: bytes) -> Message:
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def same(a: Message, b: Message) -> None:
    assert list(a.raw_items()) == list(b.raw_items())
    assert a.is_multipart() == b.is_multipart()
    if a.is_multipart():
        parts_a, parts_b = a.get_payload(), b.get_payload()
        assert len(parts_a) == len(parts_b)
        for part_a, part_b in zip(parts_a, parts_b, strict=True):
            same(part_a, part_b)
    else:
        assert a.get_payload() == b.get_payload()
    assert [type(d) for d in a.defects] == [type(d) for d in b.defects]
    assert a.get_unixfrom() == b.get_unixfrom()
    assert a.get_content_type() == b.get_content_type()
    assert a.as_bytes() == b.as_bytes()


PLAIN = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"

EDGES = {
    "crlf": PLAIN,
    "lf": PLAIN.replace(b"\r\n", b"\n"),
    "cr": PLAIN.replace(b"\r\n", b"\r"),
    "mixed endings": b"From: a@example.com\nTo: b@example.com\r\n\r\nbody\rmore\nend",
    "lf then crlf blank line": b"From: a@example.com\n\r\nbody\r\n",
    "no trailing newline": b"From: a@example.com\r\n\r\nno newline at the end",
    "empty body": b"From: a@example.com\r\n\r\n",
    "no empty line": b"From: a@example.com\r\nSubject: only headers\r\n",
    "no empty line, no newline": b"From: a@example.com",
    "starts with an empty line": b"\r\nFrom: not a header\r\n\r\nbody\r\n",
    "non-header line in the head": b"From: a@example.com\r\nthis is not a header\r\nTo: b@example.com\r\n\r\nbody\r\n",
    "continuation lines": b"Subject: a long\r\n\tsubject\r\n  folded\r\nFrom: a@example.com\r\n\r\nbody\r\n",
    "continuation first": b" folded first\r\nFrom: a@example.com\r\n\r\nbody\r\n",
    "unix from": b"From someone@example.com Mon Jan  1 00:00:00 2026\r\nFrom: a@example.com\r\n\r\nbody\r\n",
    "8-bit header and body": "Subject: caf\u00e9\r\nFrom: a@example.com\r\n\r\nna\u00efve body \u2603\r\n".encode(),
    "latin-1 body": b"From: a@example.com\r\nContent-Type: text/plain; charset=latin-1\r\n\r\ncaf\xe9\r\n",
    "base64 body": b"From: a@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n",
    "html": b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n",
    "multipart": (
        b'From: a@example.com\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b--\r\n"
    ),
    "message/rfc822": (
        b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@example.com\r\n\r\ninner\r\n"
    ),
    "bad content type": b"From: a@example.com\r\nContent-Type: garbage\r\n\r\nbody\r\n",
    "header without value": b"From: a@example.com\r\nX-Empty:\r\n\r\nbody\r\n",
    "space before colon": b"From : a@example.com\r\n\r\nbody\r\n",
    "blank line of spaces": b"From: a@example.com\r\n \r\nbody\r\n\r\nmore\r\n",
    "NUL in body": b"From: a@example.com\r\n\r\nbo\x00dy\r\n",
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_each_edge_case_parses_as_the_email_parser_parses_it(name):
    raw = EDGES[name]
    fast = _single_part(raw)
    if fast is not None:
        same(fast, full(raw))
    same(parse_message(raw)[0], full(raw))


@pytest.mark.parametrize("name", corpus_names())
def test_every_corpus_report_and_original_parses_as_the_email_parser_parses_it(name):
    raw = corpus(name)
    for message in {raw, parse_report(raw).original}:
        same(parse_message(message)[0], full(message))


def test_plain_single_part_mail_takes_the_fast_path_and_the_rest_does_not():
    """Otherwise the comparisons above would hold with the fast path never used."""
    for name in ("crlf", "lf", "cr", "mixed endings", "no trailing newline", "empty body", "8-bit header and body"):
        assert _single_part(EDGES[name]) is not None, name
    for name in ("multipart", "message/rfc822", "no empty line", "starts with an empty line"):
        assert _single_part(EDGES[name]) is None, name
    singles = [n for n in corpus_names() if _single_part(parse_report(corpus(n)).original) is not None]
    assert singles  # the corpus has plain originals


def first_empty_line(raw: bytes) -> tuple[bytes, bytes]:
    """split_head_body's contract, the plain way: whichever of \\r\\n\\r\\n and \\n\\n comes first."""
    if raw.startswith((b"\r\n", b"\n")):
        return b"", raw[2 if raw.startswith(b"\r\n") else 1 :]
    found = [(pos, width) for pos, width in ((raw.find(b"\r\n\r\n"), 4), (raw.find(b"\n\n"), 2)) if pos >= 0]
    if not found:
        return raw, b""
    pos, width = min(found)
    return raw[:pos], raw[pos + width :]


@pytest.mark.parametrize("name", sorted(EDGES))
def test_the_head_ends_at_the_first_empty_line_of_either_kind(name):
    from archive.parser.rawmime import split_head_body

    raw = EDGES[name]
    for candidate in (raw, raw.replace(b"\r\n", b"\n"), b"A: b\r\n\n" + raw, b"A: b\n\r\n\r\n" + raw):
        assert split_head_body(candidate) == first_empty_line(candidate)


def test_a_cached_content_type_is_the_callers_own_copy():
    from archive.parser.rawmime import _content_type, content_type

    value = b'text/plain; charset="utf-8"'
    first = content_type(value)
    first[1]["charset"] = "changed by a caller"
    assert content_type(value) == _content_type(value) == ("text/plain", {"charset": "utf-8"})
    long_value = b"multipart/mixed; boundary=" + b"b" * 300  # not cached: as parsed
    assert content_type(long_value) == _content_type(long_value)
