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


# --- address lists ---------------------------------------------------------------

ADDRS = [
    "a@x.com", "A.B@x.co.uk", "o'brien+tag@x-y.com", "first.last@sub.example.org", ".a@x.com", "a..b@x.com",
    "a.@x.com", "a@b.", "a@b..com", "a@[1.2.3.4]", "a@exämple.com", "smtp:a@x.com", "SMTP:A@X.COM", "user@x",
    "a b@x.com", "a@", "@x.com", "a@@x.com", "a@-x.com", '"quoted local"@x.com', "x!#$%&*/=?^_`{|}~-@x.com",
    "a(comment)@x.com", "a@x.com(comment)", "a @ x.com", "a@ x.com", '"q"@x.com', "a@x.com.", "A@X.COM",
]  # fmt: skip
NAMES = [
    "", "Alice", "Alice Smith", "A.B. Jr", "O'Brien", '"Smith, John"', "(comment)", "Jürgen", "=?utf-8?q?J=C3=BCrgen?=",
    "a@b.com", "Al\tTab", "  spaced  ", "semi;colon", "back\\slash",
]  # fmt: skip
SHAPES = [
    "{addr}", "<{addr}>", "{name} <{addr}>", "{name}<{addr}>", "{addr} ({name})", "{name} <{addr}", "{addr}>",
    "group: {addr};", "", " ", "{name} <{addr}> trailing", "<{addr}> <{addr}>",
]  # fmt: skip
SEPARATORS = [",", ", ", " ,", ",,", "\t,", ";", ", ,"]


def reference_addresses(value: str) -> list[str]:
    """What `addresses` gave before its fast path: getaddresses for every value."""
    from email.utils import getaddresses

    from archive.parser.message import _kept

    try:
        pairs = getaddresses([value])
    except (ValueError, IndexError, TypeError):
        return []
    return _kept([addr for _name, addr in pairs], 1000)


def generated_address_lists(count: int) -> list[str]:
    import random

    rng = random.Random(21)
    values = []
    for _ in range(count):
        items = [
            rng.choice(SHAPES).format(addr=rng.choice(ADDRS), name=rng.choice(NAMES)) for _ in range(rng.randint(1, 4))
        ]
        value = items[0]
        for item in items[1:]:
            value += rng.choice(SEPARATORS) + item
        values.append(value)
    return values


def test_address_lists_read_as_getaddresses_reads_them():
    from archive.parser.message import _simple_addr_specs, addresses

    values = generated_address_lists(5000)
    for value in values:
        assert addresses(value) == reference_addresses(value), value
    simple = [v for v in values if _simple_addr_specs(v) is not None]
    assert 200 < len(simple) < len(values)  # both paths were compared, many times each


def test_corpus_address_headers_read_as_getaddresses_reads_them():
    from archive.parser.journal import parse_envelope
    from archive.parser.message import addresses, parse_message, raw_header

    for name in corpus_names():
        report = parse_report(corpus(name))
        message, _ = parse_message(report.original)
        for header in ("from", "to", "cc", "bcc", "sender", "reply-to"):
            value = raw_header(message, header, join=True)
            if value:
                text = value.decode("utf-8", "replace")
                assert addresses(text) == reference_addresses(text), (name, header)
        assert parse_envelope("To: a@x.com, Bob <b@y.com>\r\nBcc: c@z.com, Expanded: list@y.com").recipients


def test_plain_address_lists_take_the_fast_path():
    from archive.parser.message import _simple_addr_specs

    for value in ("a@x.com", "Alice <a@x.com>, b@y.com", " <a@x.com> ,  A.B. Jr <b@y.com>", "o'brien+tag@x-y.com"):
        assert _simple_addr_specs(value) is not None, value
    for value in ('"Smith, John" <a@x.com>', "a@x.com (Al)", "group: a@x.com;", "Jürgen <j@x.com>", "smtp:a@x.com"):
        assert _simple_addr_specs(value) is None, value


def test_simple_pairs_are_what_getaddresses_gives():
    """The worker's display names and single addresses (`archive.documents`)
    come from `simple_pairs` when a value is simple: the same pairs."""
    import random
    from email.utils import getaddresses

    from archive.documents import _address, _display_name
    from archive.parser.message import simple_pairs

    rng = random.Random(5)
    words = ["Alice", "A.B.", "Jr", "O'Brien", ".", "-", "x!#$%&*/=?^_`{|}~", "", " ", "\t", "..", "Smith."]

    def named() -> str:
        name = "".join(rng.choice([*words, " ", " "]) for _ in range(rng.randint(0, 5)))
        return rng.choice(["{a}", "{n}<{a}>", "{n} <{a}>", " {n} <{a}> \t"]).format(n=name, a=rng.choice(ADDRS))

    lists = [rng.choice([",", ", ", " , "]).join(named() for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    values = [*generated_address_lists(5000), *lists, *(f"{name} <a@x.com>" for name in NAMES), "", " ", "a@x.com,"]
    simple = 0
    for value in values:
        pairs = simple_pairs(value)
        if pairs is not None:
            simple += 1
            assert pairs == getaddresses([value]), value
        reference = getaddresses([value])
        assert _display_name(value) == ", ".join(name for name, _ in reference if name), value
        if value:
            assert _address(value) == (reference[0][1] if reference else value).strip().lower(), value
    assert 200 < simple < len(values)  # both paths were compared, many times each
    assert simple_pairs("  Alice \t Smith  <a@x.com>, b@y.com") == [("Alice Smith", "a@x.com"), ("", "b@y.com")]
    assert simple_pairs('"Smith, John" <a@x.com>') is None and simple_pairs("a@x.com,") is None
