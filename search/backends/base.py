"""The one search interface, and the one place where every query is scoped.

Callers (tasks, web, exports) use only the public methods of SearchBackend.
Those methods are final: they validate their input, parse the query, and wrap
it in the tenant filter (and, for a plain user, the participant filter) before
a backend sees anything. A backend implements the underscore methods and
receives a ScopedQuery whose root always starts with TenantIs; it translates
that whole tree, so it cannot forget the scope. `__init_subclass__` refuses a
backend that overrides a public method.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from infra.text import storable
from search.document import HIDDEN_CAPABLE, SearchDocument
from search.query import (
    FIELD_TARGETS,
    SCOPE_NODES,
    And,
    IdIn,
    InFolder,
    MatchAll,
    Node,
    Not,
    Or,
    ParticipantIn,
    QueryError,
    SenderIn,
    TenantIs,
    Text,
    exact_address,
    parse,
    walk,
)

MAX_LIMIT = 1000
# Deepest page reachable with offset/limit (Elasticsearch's default
# max_result_window). Exports walk every hit with scan() instead.
MAX_WINDOW = 10_000


# Orders of `search`: by date either way, or by relevance (ties newest first).
NEWEST, OLDEST, RELEVANCE = "newest", "oldest", "relevance"
SORTS = (NEWEST, OLDEST, RELEVANCE)


class SearchError(Exception):
    """The search backend refused a request (a bug or a broken index, not a retry)."""


class SearchUnavailable(SearchError):
    """The search backend cannot be reached or stayed busy; retry with backoff."""


@dataclass(frozen=True)
class Scope:
    """Who is searching: a tenant, and for a plain user the addresses they own.

    addresses None: all of the tenant's mail (owner, admin, auditor).
    addresses a list: a plain user; only messages where one of these
    addresses is the sender or a header/envelope recipient. An empty list
    sees nothing.
    """

    tenant_id: int
    # A list or tuple; stored as a sorted tuple of lowercase addresses.
    addresses: Sequence[str] | None = None

    def __post_init__(self) -> None:
        _check_tenant(self.tenant_id)
        if self.addresses is not None:
            if isinstance(self.addresses, str):
                raise TypeError("Scope.addresses must be a list of addresses, not one string")
            normalized = tuple(sorted({a.strip().lower() for a in self.addresses if a and a.strip()}))
            object.__setattr__(self, "addresses", normalized)


@dataclass(frozen=True)
class Hits:
    count: int  # every match in scope, not just this page
    ids: list[int]  # archive.Message ids of this page, newest first (date desc, id desc)


@dataclass(frozen=True)
class ScopedQuery:
    """A query tree that carries its tenant filter; only SearchBackend makes these."""

    tenant_id: int
    root: Node

    def __post_init__(self) -> None:
        first = self.root.children[0] if isinstance(self.root, And) else self.root
        if first != TenantIs(self.tenant_id):
            raise ValueError("a ScopedQuery must start with its tenant filter")


def _check_tenant(tenant_id: object) -> None:
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or tenant_id <= 0:
        raise ValueError(f"tenant_id must be a positive int, got {tenant_id!r}")


def _scoped(tenant_id: int, *filters: Node) -> ScopedQuery:
    """THE tenant filter: every read, count and delete goes through here."""
    _check_tenant(tenant_id)
    parts: list[Node] = [TenantIs(tenant_id)]
    for node in filters:
        parts.extend(node.children if isinstance(node, And) else (node,))
    parts = [p for p in parts if not isinstance(p, MatchAll)]
    return ScopedQuery(tenant_id, And(tuple(parts)) if len(parts) > 1 else parts[0])


def _after_tenant(scoped: ScopedQuery) -> tuple[Node, ...]:
    """The filters of a scoped query after its tenant filter."""
    return scoped.root.children[1:] if isinstance(scoped.root, And) else ()


def scope_query(scope: Scope, query: str | Node) -> ScopedQuery | None:
    """The user's query limited to what `scope` may see; None when that is nothing."""
    ast = parse(query) if isinstance(query, str) else query
    if not isinstance(ast, Node):
        raise QueryError("The query must be text.")
    if any(isinstance(node, SCOPE_NODES) for node in walk(ast)):
        # A caller-built tree must not smuggle in its own tenant or id filter.
        raise QueryError("The query contains a scope filter.")
    if scope.addresses is None:
        return _scoped(scope.tenant_id, ast)
    if not scope.addresses:
        return None
    addresses = tuple(scope.addresses)  # already one (__post_init__): the same object, for the type
    return _scoped(scope.tenant_id, ParticipantIn(addresses), without_hidden(ast, addresses))


def without_hidden(node: Node, addresses: tuple[str, ...]) -> Node:
    """A plain user's query: Bcc and envelope-only recipients match only in mail
    one of `addresses` sent, or when the term is exactly one of `addresses`.

    Rewriting every term (not adding a filter) keeps NOT consistent: for
    mail they did not send, the query runs as if those recipients were
    never indexed, so neither `bcc:erin` nor `-bcc:erin` tells anything.
    Likewise a folder term looks only at the copies in their own mailboxes:
    where someone else filed a message is theirs alone.
    """
    if isinstance(node, InFolder):
        return InFolder(node.path, addresses)
    if isinstance(node, Not):
        return Not(without_hidden(node.child, addresses))
    if isinstance(node, And | Or):
        return type(node)(tuple(without_hidden(child, addresses) for child in node.children))
    if not isinstance(node, Text) or not node.hidden or not _looks_in_hidden(node):
        return node
    own = _own_address(node, addresses)
    if own and node.field is not None:
        return node  # `to:me@…` finds mail that reached me as Bcc: it names only me
    options: list[Node] = [replace(node, hidden=False), And((SenderIn(addresses), node))]
    if own:
        options.append(Text("to", own))  # a free word that is my own address, matched exactly
    return Or(tuple(options))


def _looks_in_hidden(node: Text) -> bool:
    return any(target in HIDDEN_CAPABLE for target in FIELD_TARGETS[node.field])


def _own_address(node: Text, addresses: tuple[str, ...]) -> str | None:
    candidate = exact_address(node.field or "to", node.value)
    return candidate if candidate in addresses else None


_ADDRESS_IN_TEXT = re.compile(r"[^\s<>\"',;:()\[\]]+@[^\s<>\"',;:()\[\]]+")


def addresses_in(values: Iterable[str]) -> list[str]:
    """The lower-cased addresses in these values, which may be bare addresses,
    display names, or "Name <address>" forms; in first-seen order."""
    found: dict[str, None] = {}
    for value in values:
        for address in _ADDRESS_IN_TEXT.findall(value or ""):
            found.setdefault(address.lower().strip("."), None)
    return list(found)


def prepare_document(doc: SearchDocument) -> SearchDocument:
    """Check a document, make its text storable and `participants` complete and lower-cased.

    participants always includes the sender and every header and envelope
    recipient, so a builder that forgets one cannot hide mail from its owner.
    header_addresses defaults to the addresses of from_, to and cc.
    Text loses NUL characters and lone surrogates (`infra.text`), which a
    body or an attachment's text may hold and which no engine should see.
    """
    if not isinstance(doc, SearchDocument):
        raise TypeError(f"expected SearchDocument, got {type(doc).__name__}")
    _check_tenant(doc.tenant_id)
    if doc.date.tzinfo is None:
        raise ValueError(f"document {doc.id}: date must be timezone-aware")
    doc = _storable_document(doc)
    participants = {p.strip().lower() for p in doc.participants if p and p.strip()}
    participants.update(addresses_in([*doc.from_, *doc.to, *doc.cc, *doc.bcc, *doc.recipients]))
    shown = doc.header_addresses
    shown = addresses_in([*doc.from_, *doc.to, *doc.cc]) if shown is None else addresses_in(shown)
    return replace(doc, participants=sorted(participants), header_addresses=sorted(shown))


def split_hidden(doc: SearchDocument) -> dict[str, tuple[list[str], list[str]]]:
    """Per recipient field of a prepared document: (the entries every recipient
    can read in the headers, the hidden ones). Every Bcc is hidden; an entry
    is shown only when each address in it is in the headers."""
    shown = set(doc.header_addresses or ())
    split: dict[str, tuple[list[str], list[str]]] = {}
    for name in HIDDEN_CAPABLE:
        visible: list[str] = []
        hidden: list[str] = []
        for value in getattr(doc, name):
            found = addresses_in([value])
            in_headers = name != "bcc" and bool(found) and shown.issuperset(found)
            (visible if in_headers else hidden).append(value)
        split[name] = (visible, hidden)
    return split


def _storable_document(doc: SearchDocument) -> SearchDocument:
    changes = {}
    for name, value in vars(doc).items():
        if isinstance(value, str | list) and (clean := storable(value)) != value:
            changes[name] = clean
    return replace(doc, **changes) if changes else doc


class SearchBackend(abc.ABC):
    """Index, search, count and delete one region's messages, always per tenant."""

    name = "abstract"
    _FINAL = ("index", "delete", "delete_tenant", "search", "scan", "matching", "count")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in cls._FINAL if name in cls.__dict__]
        if overridden:
            raise TypeError(f"{cls.__name__} must not override {overridden}: scoping lives in SearchBackend")

    # --- public, final ----------------------------------------------------------

    def index(self, docs: Iterable[SearchDocument]) -> None:
        """Add or replace documents in bulk. Idempotent; a document is never
        replaced by one with a lower `version` (an equal version replaces, so a
        rebuild after a parser fix refreshes the text)."""
        newest: dict[int, SearchDocument] = {}
        for doc in map(prepare_document, docs):
            if doc.id not in newest or doc.version >= newest[doc.id].version:
                newest[doc.id] = doc
        if newest:
            self._index(list(newest.values()))

    def delete(self, tenant_id: int, ids: Iterable[int]) -> None:
        """Remove these messages of this tenant; ids of other tenants are left alone."""
        ids = tuple(sorted({int(i) for i in ids}))
        if ids:
            self._delete(_scoped(tenant_id, IdIn(ids)))

    def delete_tenant(self, tenant_id: int) -> None:
        """Remove every message of one tenant."""
        self._delete(_scoped(tenant_id))

    def search(self, scope: Scope, query: str | Node, offset: int = 0, limit: int = 50, sort: str = NEWEST) -> Hits:
        """One page of the messages `scope` may see that match `query`, with the
        count of all matches. `sort`: NEWEST (date desc, id desc), OLDEST (date
        asc, id asc) or RELEVANCE (score desc, then newest first).
        Raises QueryError for a malformed query, SearchUnavailable when the
        backend cannot answer."""
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 or not 0 < limit <= MAX_LIMIT:
            raise ValueError(f"need 0 <= offset and 0 < limit <= {MAX_LIMIT}")
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        if offset + limit > MAX_WINDOW:
            raise QueryError(f"Results beyond the first {MAX_WINDOW} cannot be paged; narrow the search.")
        scoped = scope_query(scope, query)
        if scoped is None:
            return Hits(0, [])
        return self._search(scoped, offset, limit, sort)

    def scan(self, scope: Scope, query: str | Node) -> Iterator[int]:
        """Every matching id, newest first, for exports (no paging limit)."""
        scoped = scope_query(scope, query)
        if scoped is None:
            return iter(())
        return self._scan(scoped)

    def matching(self, scope: Scope, query: str | Node, ids: Iterable[int]) -> set[int]:
        """Which of these messages `query` matches, as `search` would find them
        (retention and legal hold decide message by message with it)."""
        wanted = tuple(sorted({int(i) for i in ids}))
        scoped = scope_query(scope, query) if wanted else None
        if scoped is None:
            return set()
        found: set[int] = set()
        for start in range(0, len(wanted), MAX_LIMIT):
            narrowed = _scoped(scoped.tenant_id, IdIn(wanted[start : start + MAX_LIMIT]), *_after_tenant(scoped))
            found.update(self._scan(narrowed))
        return found

    def count(self, tenant_id: int) -> int:
        """How many messages of this tenant are indexed."""
        return self._search(_scoped(tenant_id), 0, 1, NEWEST).count

    # --- for backends -----------------------------------------------------------

    @abc.abstractmethod
    def _index(self, docs: list[SearchDocument]) -> None:
        """Write these (validated, one per id) documents, honouring `version`."""

    @abc.abstractmethod
    def _delete(self, query: ScopedQuery) -> None:
        """Delete every document matching the scoped query."""

    @abc.abstractmethod
    def _search(self, query: ScopedQuery, offset: int, limit: int, sort: str) -> Hits:
        """Count the matches and return one page, date desc, id desc."""

    @abc.abstractmethod
    def _scan(self, query: ScopedQuery) -> Iterator[int]:
        """Every matching id, date desc, id desc."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Make everything indexed so far visible to search."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the backend answers (for /readyz)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files."""
