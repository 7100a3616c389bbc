"""The query language: one parser, one AST, clear errors for the web's 400."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.query import (
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    MAX_TERMS,
    And,
    DateRange,
    HasAttachment,
    MatchAll,
    Node,
    Not,
    Or,
    QueryError,
    Text,
    exact_address,
    parse,
)


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "tree"),
    [
        ("", MatchAll()),
        ("   \t ", MatchAll()),
        ("budget", Text(None, "budget")),
        ("q3 budget", And((Text(None, "q3"), Text(None, "budget")))),
        ('"q3 numbers"', Text(None, "q3 numbers", quoted=True)),
        ("from:alice@contoso.com", Text("from", "alice@contoso.com")),
        ("FROM:Alice@Contoso.com", Text("from", "Alice@Contoso.com")),
        ("to:bob", Text("to", "bob")),
        ("cc:carol bcc:erin", And((Text("cc", "carol"), Text("bcc", "erin")))),
        ('subject:"q3 numbers"', Text("subject", "q3 numbers", quoted=True)),
        ("body:hello", Text("body", "hello")),
        ("attachment:invoice.pdf", Text("attachment", "invoice.pdf")),
        ("filename:invoice.pdf", Text("attachment", "invoice.pdf")),
        ("has:attachment", HasAttachment()),
        ("HAS:Attachments", HasAttachment()),
        ("after:2024-03-01", DateRange(start=day("2024-03-01"))),
        ("before:2024/3/2", DateRange(end=day("2024-03-02"))),
        ("a AND b", And((Text(None, "a"), Text(None, "b")))),
        ("a OR b", Or((Text(None, "a"), Text(None, "b")))),
        ("NOT a", Not(Text(None, "a"))),
        ("-a", Not(Text(None, "a"))),
        ("-from:alice", Not(Text("from", "alice"))),
        ('-"a b"', Not(Text(None, "a b", quoted=True))),
        ("NOT NOT a", Text(None, "a")),
        ("-(a OR b)", Not(Or((Text(None, "a"), Text(None, "b"))))),
        # OR binds tighter than AND (Gmail): (a OR b) AND c
        ("a OR b c", And((Or((Text(None, "a"), Text(None, "b"))), Text(None, "c")))),
        ("c a OR b", And((Text(None, "c"), Or((Text(None, "a"), Text(None, "b")))))),
        ("(a b) OR c", Or((And((Text(None, "a"), Text(None, "b"))), Text(None, "c")))),
        ("a AND (b AND c)", And((Text(None, "a"), Text(None, "b"), Text(None, "c")))),
        ("subject:(a OR b)", Or((Text("subject", "a"), Text("subject", "b")))),
        ("subject:(a from:b)", And((Text("subject", "a"), Text("from", "b")))),
        # Unknown fields and operators in lower case are plain words.
        ("foo:bar", Text(None, "foo:bar")),
        ("tenant_id:1", Text(None, "tenant_id:1")),
        ("http://example.com/x", Text(None, "http://example.com/x")),
        ("rock and roll", And((Text(None, "rock"), Text(None, "and"), Text(None, "roll")))),
        ("e-mail", Text(None, "e-mail")),
        # Punctuation-only terms are dropped.
        ("- ***", MatchAll()),
        ("a - b", And((Text(None, "a"), Text(None, "b")))),
        ('""', MatchAll()),
        ("a OR ***", Text(None, "a")),
    ],
)
def test_queries_parse_into_the_expected_tree(query, tree):
    assert parse(query) == tree


def test_after_and_before_bound_a_day_in_utc():
    tree = parse("after:2024-03-01 before:2024-03-02")
    assert tree == DateRange(start=day("2024-03-01"), end=day("2024-03-02"))


def test_date_bounds_in_one_and_merge_into_one_range():
    tree = parse("budget after:2024-01-01 before:2024-06-01 after:2024-02-01")
    assert tree == And((Text(None, "budget"), DateRange(start=day("2024-02-01"), end=day("2024-06-01"))))
    assert parse("after:2024-01-01 OR before:2023-01-01") == Or(
        (DateRange(start=day("2024-01-01")), DateRange(end=day("2023-01-01")))
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('"unclosed', "Unbalanced quote"),
        ('subject:"unclosed', "Unbalanced quote"),
        ("(a OR b", "never closed"),
        ("a OR b)", "no matching"),
        (")", "no matching"),
        ("()", "Empty parentheses"),
        ("after:yesterday", "YYYY-MM-DD"),
        ("before:2024-02-30", "not a valid date"),
        ("after:", "after: needs a date as YYYY-MM-DD, e.g. after:2026-03-01"),
        ("from:", "from: needs an address, e.g. from:anna@contoso.com"),
        ("from: alice", "from: needs an address"),
        ("has:pdf", "has:attachment"),
        ("a OR", "OR at position 3"),
        ("OR a", "OR at position 1"),
        ("a AND", "AND at position 3"),
        ("a AND OR b", "AND"),
        ("NOT", "NOT at position 1"),
        ("a -", None),  # a lone minus at the end is punctuation, not an error
        ("after:(2024-01-01)", "cannot be applied to a group"),
        ("(" * (MAX_DEPTH + 2) + "a" + ")" * (MAX_DEPTH + 2), "nests deeper"),
        (" ".join(["w"] * (MAX_TERMS + 1)), "more than"),
        ("x" * (MAX_QUERY_LENGTH + 1), "longer than"),
    ],
)
def test_malformed_queries_raise_a_query_error_with_a_clear_message(query, message):
    if message is None:
        parse(query)
        return
    with pytest.raises(QueryError, match=message):
        parse(query)


def test_a_query_error_is_a_value_error():
    assert issubclass(QueryError, ValueError)


def test_non_text_is_refused():
    with pytest.raises(QueryError):
        parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "address"),
    [
        ("from", "alice@contoso.com", "alice@contoso.com"),
        ("to", "<Bob@Contoso.COM>", "bob@contoso.com"),
        ("from", "contoso.com", None),
        ("from", "@contoso.com", None),
        ("from", "alice", None),
        (None, "alice@contoso.com", None),  # a free word is matched as words
        ("subject", "alice@contoso.com", None),
    ],
)
def test_full_addresses_in_address_fields_match_exactly(field, value, address):
    assert exact_address(field, value) == address


ALPHABET = st.sampled_from(
    list('abcXYZ019 ()"-:@./*\t')
    + ["AND", "OR", "NOT", "from:", "to:", "has:", "after:", "before:", "subject:", "2024-01-01", "é", "\x00"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_any_string_parses_or_raises_query_error(text):
    try:
        tree = parse(text)
    except QueryError as error:
        assert str(error)
        return
    assert isinstance(tree, Node)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_unicode_text_parses_or_raises_query_error(text):
    try:
        assert isinstance(parse(text), Node)
    except QueryError:
        pass
