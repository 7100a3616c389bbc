"""DESIGN's search language, parsed once into a small AST that every backend translates.

Syntax (field names are case-insensitive; the operators AND, OR and NOT are
upper case, as in Gmail, so that "rock and roll" stays three words):

    word                free word: subject, body, addresses, attachment names and text
    "exact phrase"      the words in this order
    from:  to:  cc:  bcc:  subject:  body:  attachment:   (filename: is an alias of attachment:)
                        `to:` looks in To, Cc, Bcc and every envelope recipient
                        (for a plain user, Bcc and envelope-only recipients
                        count only in mail they sent: search/backends/base.py);
                        `attachment:` in attachment names and their extracted text
    field:"a phrase"    a phrase inside one field
    field:(a OR b)      every term of the group inside that field
    has:attachment
    kind:mail|event|contact   mail, calendar events or contacts (archive.items)
    folder:Inbox/Projects     filed in that mailbox folder or one below it
                        (case-insensitive; quote a name with spaces:
                        folder:"Sent Items"); a plain user's folder: terms
                        look only at copies in their own mailboxes
    after:YYYY-MM-DD    on or after that day  (date >= the day's 00:00 UTC)
    before:YYYY-MM-DD   before that day       (date <  the day's 00:00 UTC)
                        so `after:2024-03-01 before:2024-03-02` is exactly March 1st (UTC);
                        YYYY/MM/DD is accepted too
    a b, a AND b        both
    a OR b              either; OR binds tighter than AND, as in Gmail:
                        `from:alice OR from:bob report` = (alice OR bob) AND report
    NOT a, -a           not
    ( ... )             grouping

An address value with an @ (`from:alice@contoso.com`) matches that exact
address; other address values (`from:contoso.com`, `to:alice`) match the words
of addresses and display names in order, so a domain or a local part works.
A word of a field that does not exist (`foo:bar`, `tenant_id:1`) is plain text.
A term with no letter or digit in it (`-`, `***`) is ignored. The empty query
matches everything. Anything malformed raises QueryError with a message that
can be shown to the user.

Backends tokenise Text values with their own analyzer (split on anything that
is not a letter or digit, lower-cased, accents folded) and treat a value that
yields several tokens as a phrase.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

MAX_QUERY_LENGTH = 2000
MAX_TERMS = 64
MAX_DEPTH = 16


class QueryError(ValueError):
    """The query cannot be parsed; str(error) is a message for the user."""


# --- AST -----------------------------------------------------------------------


class Node:
    """Base of every AST node. Nodes are immutable and comparable."""

    __slots__ = ()


@dataclass(frozen=True)
class MatchAll(Node):
    pass


@dataclass(frozen=True)
class Text(Node):
    """Words in a field; field None means any text field.

    `quoted` records that the user wrote a phrase in quotes; backends match
    every Text value as a phrase of its tokens either way.
    """

    field: str | None
    value: str
    quoted: bool = False
    # Also look in the hidden recipient fields (Bcc, envelope-only; see
    # search.document.HIDDEN_CAPABLE). The parser always says yes; only the
    # scoping in search/backends/base.py narrows it for a plain user.
    hidden: bool = True


@dataclass(frozen=True)
class HasAttachment(Node):
    pass


@dataclass(frozen=True)
class KindIs(Node):
    """The item is of this kind: "mail", "event" or "contact"."""

    kind: str


@dataclass(frozen=True)
class InFolder(Node):
    """Filed in this folder or one below it: `path` lower-cased, levels joined by "/".

    `mailboxes` None: in any mailbox's copy.  A tuple: only in these
    mailboxes' copies (search/backends/base.py narrows a plain user's
    folder terms to their own mailboxes, so another person's filing is never searchable).
    """

    path: str
    mailboxes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DateRange(Node):
    """start <= date < end, both aware UTC datetimes or None (unbounded)."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Not(Node):
    child: Node


@dataclass(frozen=True)
class And(Node):
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or(Node):
    children: tuple[Node, ...]


# Scope nodes. The parser never produces them: only SearchBackend adds them
# (search/backends/base.py), and it refuses an AST from a caller that has one.


@dataclass(frozen=True)
class TenantIs(Node):
    tenant_id: int


@dataclass(frozen=True)
class ParticipantIn(Node):
    """One of these lower-cased addresses is sender or (envelope) recipient."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class SenderIn(Node):
    """One of these lower-cased addresses sent the message (From, Sender, On-Behalf-Of)."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class IdIn(Node):
    ids: tuple[int, ...]


SCOPE_NODES = (TenantIs, ParticipantIn, SenderIn, IdIn)

# Which document fields a query field looks in (names of SearchDocument,
# with `from` for `from_`). None is a free word.
TEXT_FIELDS = ("subject", "body", "attachment_names", "attachment_text")
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "recipients")
FIELD_TARGETS: dict[str | None, tuple[str, ...]] = {
    None: TEXT_FIELDS + ADDRESS_FIELDS,
    "from": ("from",),
    "to": ("to", "cc", "bcc", "recipients"),
    "cc": ("cc",),
    "bcc": ("bcc",),
    "subject": ("subject",),
    "body": ("body",),
    "attachment": ("attachment_names", "attachment_text"),
}
FIELD_ALIASES = {"filename": "attachment", "attachments": "attachment"}
SPECIAL_FIELDS = ("has", "after", "before", "kind", "folder")
KINDS = ("mail", "event", "contact")
KIND_ALIASES = {"email": "mail", "message": "mail", "events": "event", "calendar": "event", "contacts": "contact"}

_EXACT_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def exact_address(field: str | None, value: str) -> str | None:
    """The lower-cased address when an address-field value is a full address."""
    if field is None or FIELD_TARGETS[field][0] not in ADDRESS_FIELDS:
        return None
    candidate = value.strip().strip("<>").lower()
    return candidate if _EXACT_ADDRESS.match(candidate) else None


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, depth first."""
    yield node
    if isinstance(node, Not):
        yield from walk(node.child)
    elif isinstance(node, And | Or):
        for child in node.children:
            yield from walk(child)


# --- lexer ---------------------------------------------------------------------

# Token kinds
LPAREN, RPAREN, OR, AND, NOT, MINUS, TERM, FIELD_GROUP, END = (
    "(",
    ")",
    "OR",
    "AND",
    "NOT",
    "-",
    "term",
    "field(",
    "end",
)


@dataclass(frozen=True)
class _Token:
    kind: str
    field: str | None = None
    value: str = ""
    quoted: bool = False
    pos: int = 0


_FIELD_PREFIX = re.compile(r"([A-Za-z_]+):")
_WORD_END = re.compile(r'[\s()"]')


def _field_name(raw: str) -> str | None:
    name = raw.lower()
    name = FIELD_ALIASES.get(name, name)
    if name in FIELD_TARGETS or name in SPECIAL_FIELDS:
        return name
    return None


def _read_phrase(text: str, start: int) -> tuple[str, int]:
    """text[start] is a double quote; returns the phrase and the index after it."""
    end = text.find('"', start + 1)
    if end < 0:
        raise QueryError(f'Unbalanced quote: the " at position {start + 1} is never closed.')
    return text[start + 1 : end], end + 1


def _read_word(text: str, start: int) -> tuple[str, int]:
    match = _WORD_END.search(text, start)
    end = match.start() if match else len(text)
    return text[start:end], end


def tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            tokens.append(_Token(LPAREN if ch == "(" else RPAREN, pos=i))
            i += 1
        elif ch == '"':
            start = i
            value, i = _read_phrase(text, i)
            tokens.append(_Token(TERM, value=value, quoted=True, pos=start))
        elif ch == "-" and i + 1 < n and not text[i + 1].isspace() and text[i + 1] != ")":
            tokens.append(_Token(MINUS, pos=i))
            i += 1
        else:
            i = _lex_word(text, i, tokens)
    tokens.append(_Token(END, pos=n))
    return tokens


def _lex_word(text: str, i: int, tokens: list[_Token]) -> int:
    """A bare word, an operator, or field:value / field:"phrase" / field:( ."""
    prefix = _FIELD_PREFIX.match(text, i)
    field = _field_name(prefix.group(1)) if prefix else None
    if prefix and field:
        j = prefix.end()
        if j < len(text) and text[j] == '"':
            value, j = _read_phrase(text, j)
            tokens.append(_Token(TERM, field=field, value=value, quoted=True, pos=i))
            return j
        if j < len(text) and text[j] == "(":
            if field in SPECIAL_FIELDS:
                raise QueryError(f"{field}: cannot be applied to a group.")
            tokens.append(_Token(FIELD_GROUP, field=field, pos=i))
            return j + 1
        value, j = _read_word(text, j)
        if not value:
            name = prefix.group(1)
            raise QueryError(
                f"{name}: needs {_EXAMPLES.get(field, ('a value', name + ':something'))[0]}, e.g. "
                f"{_EXAMPLES.get(field, ('', name + ':something'))[1]}"
            )
        tokens.append(_Token(TERM, field=field, value=value, pos=i))
        return j
    word, j = _read_word(text, i)
    if word in (OR, AND, NOT):
        tokens.append(_Token(word, pos=i))
    else:
        tokens.append(_Token(TERM, value=word, pos=i))
    return j


# What a field needs, and an example to type, for the error of an empty field.
_EXAMPLES: dict[str | None, tuple[str, str]] = {
    "from": ("an address", "from:anna@contoso.com"),
    "to": ("an address", "to:anna@contoso.com"),
    "cc": ("an address", "cc:anna@contoso.com"),
    "bcc": ("an address", "bcc:anna@contoso.com"),
    "subject": ("a word or a quoted phrase", 'subject:"quarterly report"'),
    "body": ("a word or a quoted phrase", 'body:"quarterly report"'),
    "after": ("a date as YYYY-MM-DD", "after:2026-03-01"),
    "before": ("a date as YYYY-MM-DD", "before:2026-04-01"),
    "has": ("attachment", "has:attachment"),
    "kind": ("mail, event or contact", "kind:mail"),
}

_FIELD_TERM = r'(?:(?<=\s)|^)-?{field}:(?:"[^"]*"?|\S*)'


def with_field(query: str, field: str, value: str) -> str:
    """The query with every `field:` term replaced by `field:value` (quoted
    when it has spaces), or removed when the value is empty. The search
    form's fields write the query language into the box through this."""
    kept = re.sub(_FIELD_TERM.format(field=re.escape(field)), " ", query, flags=re.IGNORECASE)
    kept = " ".join(kept.split())
    value = " ".join(value.replace('"', " ").split())
    if not value:
        return kept
    term = f'{field}:"{value}"' if " " in value else f"{field}:{value}"
    return f"{kept} {term}".strip()


# --- parser --------------------------------------------------------------------


def _parse_date(field: str, value: str) -> datetime:
    match = re.fullmatch(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})", value)
    if not match:
        raise QueryError(f"{field}: needs a date as YYYY-MM-DD, got {value!r}.")
    try:
        day = date(*(int(part) for part in match.groups()))
    except ValueError:
        raise QueryError(f"{field}: {value!r} is not a valid date.") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def folder_path(value: str) -> str:
    """A folder path as indexed: levels joined by "/", none empty, lower-cased."""
    return "/".join(level.strip() for level in value.split("/") if level.strip()).lower()


def _special(token: _Token) -> Node | None:
    value = token.value.strip()
    if token.field == "kind":
        kind = KIND_ALIASES.get(value.lower(), value.lower())
        if kind not in KINDS:
            raise QueryError(f"kind:{value} is not supported; use kind:mail, kind:event or kind:contact.")
        return KindIs(kind)
    if token.field == "folder":
        path = folder_path(value)
        if not path:
            raise QueryError('folder: needs a folder path, e.g. folder:Inbox or folder:"Inbox/Sent Items".')
        return InFolder(path)
    if token.field == "has":
        if value.lower() in ("attachment", "attachments"):
            return HasAttachment()
        raise QueryError(f"has:{value} is not supported; use has:attachment.")
    day = _parse_date(token.field or "", value)
    return DateRange(start=day) if token.field == "after" else DateRange(end=day)


def _combine(cls: type[And] | type[Or], nodes: list[Node | None]) -> Node | None:
    kept: list[Node] = []
    for node in nodes:
        if node is None:
            continue
        # Flatten nested nodes of the same kind: a AND (b AND c) = a AND b AND c.
        kept.extend(node.children if isinstance(node, cls) else (node,))
    if cls is And:
        kept = _merge_date_ranges(kept)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else cls(tuple(kept))


def _merge_date_ranges(nodes: list[Node]) -> list[Node]:
    """after:X before:Y is one range: engines intersect one range far faster than two half-open ones."""
    ranges = [node for node in nodes if isinstance(node, DateRange)]
    if len(ranges) < 2:
        return nodes
    starts = [r.start for r in ranges if r.start is not None]
    ends = [r.end for r in ranges if r.end is not None]
    merged = DateRange(start=max(starts) if starts else None, end=min(ends) if ends else None)
    first = nodes.index(ranges[0])
    rest = [node for node in nodes if not isinstance(node, DateRange)]
    return rest[:first] + [merged] + rest[first:]


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.terms = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def starts_operand(self) -> bool:
        return self.peek().kind in (TERM, LPAREN, FIELD_GROUP, NOT, MINUS)

    def parse(self) -> Node:
        if self.peek().kind == END:
            return MatchAll()
        node = self.and_expr(None)
        token = self.peek()
        if token.kind == RPAREN:
            raise QueryError(f"Unbalanced parenthesis: the ) at position {token.pos + 1} has no matching (.")
        if token.kind != END:
            raise QueryError(f"Unexpected {token.kind} at position {token.pos + 1}.")
        return node or MatchAll()

    def and_expr(self, field: str | None) -> Node | None:
        nodes = [self.or_expr(field)]
        while True:
            if self.peek().kind == AND:
                operator = self.take()
                if not self.starts_operand():
                    raise QueryError(f"AND at position {operator.pos + 1} needs a term on both sides.")
            elif not self.starts_operand():
                break
            nodes.append(self.or_expr(field))
        return _combine(And, nodes)

    def or_expr(self, field: str | None) -> Node | None:
        nodes = [self.unary(field)]
        while self.peek().kind == OR:
            operator = self.take()
            if not self.starts_operand():
                raise QueryError(f"OR at position {operator.pos + 1} needs a term on both sides.")
            nodes.append(self.unary(field))
        return _combine(Or, nodes)

    def unary(self, field: str | None) -> Node | None:
        token = self.peek()
        if token.kind in (NOT, MINUS):
            self.take()
            if not self.starts_operand():
                raise QueryError(f"{token.kind} at position {token.pos + 1} needs a term after it.")
            child = self.nested(lambda: self.unary(field))
            return None if child is None else (child.child if isinstance(child, Not) else Not(child))
        return self.atom(field)

    def atom(self, field: str | None) -> Node | None:
        token = self.take()
        if token.kind in (LPAREN, FIELD_GROUP):
            inner_field = token.field if token.kind == FIELD_GROUP else field
            if self.peek().kind == RPAREN:
                raise QueryError(f"Empty parentheses at position {token.pos + 1}.")
            node = self.nested(lambda: self.and_expr(inner_field))
            if self.take().kind != RPAREN:
                raise QueryError(f"Unbalanced parenthesis: the ( at position {token.pos + 1} is never closed.")
            return node
        if token.kind != TERM:
            # OR/AND without a left operand, or a stray ).
            if token.kind == RPAREN:
                raise QueryError(f"Unbalanced parenthesis: the ) at position {token.pos + 1} has no matching (.")
            raise QueryError(f"{token.kind} at position {token.pos + 1} needs a term on both sides.")
        return self.term(token, field)

    def nested(self, parse: Callable[[], Node | None]) -> Node | None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QueryError(f"The query nests deeper than {MAX_DEPTH} levels.")
        try:
            return parse()
        finally:
            self.depth -= 1

    def term(self, token: _Token, field: str | None) -> Node | None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QueryError(f"The query has more than {MAX_TERMS} terms.")
        if token.field in SPECIAL_FIELDS:
            return _special(token)
        if not any(ch.isalnum() for ch in token.value):
            return None  # punctuation only: nothing any analyzer would index
        return Text(field=token.field or field, value=token.value.strip(), quoted=token.quoted)


def parse(query: str) -> Node:
    """Parse a user's query into an AST; raises QueryError when it is malformed."""
    if not isinstance(query, str):
        raise QueryError("The query must be text.")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"The query is longer than {MAX_QUERY_LENGTH} characters.")
    return _Parser(tokenize(query)).parse()
