"""The embedded default: Tantivy (tantivy-py), one index folder per tenant
under `DATA_DIR/index/v3/`, no server.

Why Tantivy and not SQLite FTS5 (the measurements, with the synthetic
tenant of bench/search.py, are in bench/README.md):

* Every archive search is "newest first, with a total count". Tantivy
  collects the top k by a columnar timestamp while it counts, so even a word
  found in half of all mail stays fast at a million messages. FTS5 has to
  materialise every match, join it to the date column and sort, growing
  linearly with the matches.
* Phrases, per-field search, boolean trees and date ranges are native query
  objects built straight from our AST; no query string is ever assembled
  from user input.
* Indexing is not the reason: both load well above what one worker needs.

What it costs, and how this module deals with it:

* One IndexWriter per index folder across all processes (web, every Celery
  worker child). A writer lives for one batch, under an exclusive fcntl lock
  (`writer.lock`) waited for at most `lock_timeout` seconds; after that,
  SearchUnavailable tells the task to retry with backoff.
* A commit fsyncs: one message per index() call caps a writer at a few
  messages/s, so callers index in batches.
* Readers reload the segment list before every search (cheap), so a commit
  by another process is visible at once.
* A folder per tenant: a search never walks another tenant's postings (the
  folder *is* the tenant filter, checked against the scoped query's
  TenantIs), tenants index in parallel, and deleting a tenant is cheap.
* The schema is versioned by folder (`v3`); a new schema starts empty
  folders that the reindex command fills from the archive.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tantivy
from tantivy import Occur, Query

from infra.filelock import LockTimeout, file_lock
from search.backends.base import (
    NEWEST,
    OLDEST,
    RELEVANCE,
    Hits,
    ScopedQuery,
    SearchBackend,
    SearchUnavailable,
    addresses_in,
    split_hidden,
)
from search.document import HIDDEN_CAPABLE, SearchDocument, folder_terms, hidden_field
from search.query import (
    FIELD_TARGETS,
    And,
    DateRange,
    HasAttachment,
    IdIn,
    InFolder,
    KindIs,
    MatchAll,
    Node,
    Not,
    Or,
    ParticipantIn,
    SenderIn,
    TenantIs,
    Text,
    exact_address,
)

log = logging.getLogger(__name__)

# v2: a folder per tenant (v1 was one index for all); v3: hidden recipients apart;
# v4: kind and folders (mailbox items, archive.items)
SCHEMA_VERSION = "v4"
ANALYZER = "archiva"
# Document field -> SearchDocument attribute, for the analysed text fields.
TEXT_SOURCES = {
    "subject": "subject",
    "body": "body",
    "attachment_names": "attachment_names",
    "attachment_text": "attachment_text",
    "from": "from_",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "recipients": "recipients",
}
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "recipients")
HIDDEN_FIELDS = tuple(hidden_field(name) for name in HIDDEN_CAPABLE)


def _analyzer() -> tantivy.TextAnalyzer:
    """Split on anything not a letter or digit, drop >40-byte tokens, lower-case, fold accents."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    for name in ("id", "tenant_id", "ts"):
        builder.add_integer_field(name, indexed=True, fast=True)
    builder.add_integer_field("version", fast=True)
    builder.add_boolean_field("has_attachment", indexed=True, fast=True)
    for name in (*TEXT_SOURCES, *HIDDEN_FIELDS):
        builder.add_text_field(name, tokenizer_name=ANALYZER)
    # Exact, lower-cased addresses: `from:alice@contoso.com` and the plain-user scope.
    for name in (*ADDRESS_FIELDS, *HIDDEN_FIELDS, "participants"):
        builder.add_text_field(f"{name}_addr", tokenizer_name="raw", index_option="basic")
    # Exact values: the kind, and every folder with its ancestors (search.document.folder_terms).
    for name in ("kind", "folders", "mailbox_folders"):
        builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
    return builder.build()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS_MIN = ID_MIN = -(2**63)
ID_MAX = 2**63 - 1
# Ids an export's scan holds at once (`_scan`).
SCAN_PAGE = 5000


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


class _TenantIndex:
    """One tenant's Tantivy index folder, opened once per process."""

    def __init__(self, path: Path, schema: tantivy.Schema):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(schema, str(path), reuse=True)
        self.index.register_tokenizer(ANALYZER, _analyzer())
        # We reload before every search; no watcher thread per open index.
        self.index.config_reader(reload_policy="Manual")

    def searcher(self) -> tantivy.Searcher:
        # Another process may have committed: pick up its segments first.
        self.index.reload()
        return self.index.searcher()


class EmbeddedBackend(SearchBackend):
    """Tantivy, one index folder per tenant under `path/v3/tenant-<id>`.

    A folder per tenant keeps a tenant's searches free of everybody else's
    postings (the tenant filter is the folder, checked against the scoped
    query's TenantIs), lets tenants index in parallel (one writer lock each),
    and makes deleting a tenant cheap.
    """

    name = "embedded"
    OPEN_LIMIT = 64  # open tenant indexes kept per process

    def __init__(self, path: Path | str, lock_timeout: float = 30.0, writer_heap: int = 64_000_000):
        self.path = Path(path) / SCHEMA_VERSION
        if not self.path.exists():
            _warn_if_upgraded(Path(path))
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout
        self.writer_heap = writer_heap
        self.schema = _schema()
        self.analyzer = _analyzer()
        self._thread_lock = threading.Lock()
        self._open: OrderedDict[int, _TenantIndex] = OrderedDict()

    def _folder(self, tenant_id: int) -> Path:
        return self.path / f"tenant-{int(tenant_id)}"

    def _tenant(self, tenant_id: int, create: bool) -> _TenantIndex | None:
        with self._thread_lock:
            opened = self._open.get(tenant_id)
            if opened is None:
                if not create and not (self._folder(tenant_id) / "meta.json").exists():
                    return None
                opened = _TenantIndex(self._folder(tenant_id), self.schema)
                self._open[tenant_id] = opened
                while len(self._open) > self.OPEN_LIMIT:
                    self._open.popitem(last=False)
            self._open.move_to_end(tenant_id)
            return opened

    # --- writing ------------------------------------------------------------------

    @contextmanager
    def _writer(self, tenant_id: int) -> Iterator[tuple[_TenantIndex, tantivy.IndexWriter]]:
        """The only IndexWriter on a tenant's folder, across threads and processes."""
        tenant = self._tenant(tenant_id, create=True)
        assert tenant is not None  # create=True opens one
        with _file_lock(tenant.path / "writer.lock", self.lock_timeout):
            try:
                writer = tenant.index.writer(heap_size=self.writer_heap, num_threads=1)
            except ValueError as error:  # a writer that is not ours (another library user?)
                raise SearchUnavailable(f"embedded index is locked: {error}") from error
            try:
                yield tenant, writer
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                # Let merges finish while we hold the lock, so segments stay few.
                writer.wait_merging_threads()

    def _index(self, docs: list[SearchDocument]) -> None:
        by_tenant: dict[int, list[SearchDocument]] = {}
        for doc in docs:
            by_tenant.setdefault(doc.tenant_id, []).append(doc)
        for tenant_id, batch in by_tenant.items():
            with self._writer(tenant_id) as (tenant, writer):
                current = self._versions(tenant, [doc.id for doc in batch])
                for doc in batch:
                    if doc.id in current:
                        if current[doc.id] > doc.version:
                            continue  # never replace a newer version
                        writer.delete_documents_by_term("id", doc.id)
                    writer.add_document(self._document(doc))

    def _document(self, doc: SearchDocument) -> tantivy.Document:
        out = tantivy.Document()
        out.add_integer("id", doc.id)
        out.add_integer("tenant_id", doc.tenant_id)
        out.add_integer("ts", _micros(doc.date))
        out.add_integer("version", doc.version)
        out.add_boolean("has_attachment", bool(doc.has_attachment))
        values = {field: getattr(doc, attribute) for field, attribute in TEXT_SOURCES.items()}
        for name, (shown, hidden) in split_hidden(doc).items():
            values[name], values[hidden_field(name)] = shown, hidden
        for field, value in values.items():
            for text in [value] if isinstance(value, str) else value:
                if text:
                    out.add_text(field, text)
        for field in (*ADDRESS_FIELDS, *HIDDEN_FIELDS):
            for address in addresses_in(values[field]):
                out.add_text(f"{field}_addr", address)
        for address in doc.participants:
            out.add_text("participants_addr", address)
        out.add_text("kind", doc.kind)
        paths, mailbox_paths = folder_terms(doc.folders)
        for path in paths:
            out.add_text("folders", path)
        for path in mailbox_paths:
            out.add_text("mailbox_folders", path)
        return out

    def _versions(self, tenant: _TenantIndex, ids: list[int]) -> dict[int, int]:
        searcher = tenant.searcher()
        found = searcher.search(Query.term_set_query(self.schema, "id", ids), limit=len(ids) * 2, count=False)
        addresses = [address for _, address in found.hits]
        if not addresses:
            return {}
        keys = searcher.fast_field_values("id", addresses)
        versions = searcher.fast_field_values("version", addresses)
        return dict(zip(keys, versions, strict=True))

    def _delete(self, query: ScopedQuery) -> None:
        if self._tenant(query.tenant_id, create=False) is None:
            return
        with self._writer(query.tenant_id) as (_, writer):
            if query.root == TenantIs(query.tenant_id):
                writer.delete_all_documents()
            else:
                writer.delete_documents_by_query(self._translate(query.root, query.tenant_id))

    # --- reading ------------------------------------------------------------------

    def _search(self, query: ScopedQuery, offset: int, limit: int, sort: str = NEWEST) -> Hits:
        tenant = self._tenant(query.tenant_id, create=False)
        if tenant is None:
            return Hits(0, [])
        searcher = tenant.searcher()
        translated = self._translate(query.root, query.tenant_id)
        window = offset + limit
        if sort == RELEVANCE:
            return self._by_relevance(searcher, translated, offset, window)
        ascending = sort == OLDEST
        order = tantivy.Order.Asc if ascending else tantivy.Order.Desc
        result = searcher.search(translated, limit=window, count=True, order_by_field="ts", order=order)
        rows = self._rows(searcher, result.hits)
        if len(rows) == window and result.count > window:
            rows = self._complete_ties(searcher, translated, rows, ascending)
        rows.sort(reverse=not ascending)
        return Hits(result.count, [doc_id for _, doc_id in rows[offset:window]])

    def _by_relevance(self, searcher: tantivy.Searcher, translated: Query, offset: int, window: int) -> Hits:
        """Best score first; equal scores newest first (date, then id). Tantivy
        cuts its top k among equal scores arbitrarily, so the window grows
        until every match sharing the page's lowest score is in it."""
        result = searcher.search(translated, limit=window, count=True)
        hits = result.hits
        if not hits:
            return Hits(result.count, [])
        limit = window
        while len(hits) == limit and result.count > limit:
            lowest = hits[window - 1][0]
            if hits[-1][0] < lowest:
                break
            limit = min(result.count, limit * 2)
            hits = searcher.search(translated, limit=limit, count=False).hits
        addresses = [address for _, address in hits]
        ids = searcher.fast_field_values("id", addresses)
        stamps = searcher.fast_field_values("ts", addresses)
        rows = sorted(
            zip((score for score, _ in hits), stamps, ids, strict=True),
            key=lambda row: (-row[0], -row[1], -row[2]),
        )
        return Hits(result.count, [int(doc_id) for _, _, doc_id in rows[offset:window]])

    def _rows(self, searcher: tantivy.Searcher, hits: list[tuple[int, Any]]) -> list[tuple[int, int]]:
        if not hits:
            return []
        ids = searcher.fast_field_values("id", [address for _, address in hits])
        return [(ts, doc_id) for (ts, _), doc_id in zip(hits, ids, strict=True)]

    def _complete_ties(
        self, searcher: tantivy.Searcher, translated: Query, rows: list[tuple[int, int]], ascending: bool = False
    ) -> list[tuple[int, int]]:
        """Tantivy orders by one field; messages with the page's last
        timestamp (the oldest, or the newest when ascending) may have been cut
        arbitrarily. Fetch all of them so the id tiebreak is exact."""
        oldest = max(ts for ts, _ in rows) if ascending else min(ts for ts, _ in rows)
        same = Query.range_query(self.schema, "ts", tantivy.FieldType.Integer, oldest, oldest, True, True)
        both = Query.boolean_query([(Occur.Must, translated), (Occur.Must, same)])
        tied = searcher.search(both, limit=1, count=True).count
        extra = searcher.search(both, limit=max(tied, 1), count=False, order_by_field="ts").hits
        return [row for row in rows if row[0] != oldest] + self._rows(searcher, extra)

    def _scan(self, query: ScopedQuery) -> Iterator[int]:
        """Every match, newest first (date, then id), a page of SCAN_PAGE ids
        at a time: an export of 100,000 messages holds one page, not all of
        them.  Tantivy has no search_after, so the cursor is kept here: a page
        of the newest matches older than the cursor's date, of which every
        date but the page's oldest is complete; the oldest date's messages
        are then read by id, a page at a time too (a date shared by more
        messages than a page, as in an import of undated mail, costs no more).
        One searcher for the whole scan: a consistent snapshot."""
        tenant = self._tenant(query.tenant_id, create=False)
        if tenant is None:
            return
        searcher = tenant.searcher()
        translated = self._translate(query.root, query.tenant_id)

        def both(*queries: Query) -> Query:
            return Query.boolean_query([(Occur.Must, q) for q in (translated, *queries)])

        def integer_range(field: str, lower: int, upper: int, include_upper: bool) -> Query:
            return Query.range_query(self.schema, field, tantivy.FieldType.Integer, lower, upper, True, include_upper)

        page = translated
        while True:
            rows = self._rows(searcher, searcher.search(page, limit=SCAN_PAGE, count=False, order_by_field="ts").hits)
            rows.sort(reverse=True)
            if len(rows) < SCAN_PAGE:
                yield from (doc_id for _, doc_id in rows)
                return
            oldest = rows[-1][0]
            yield from (doc_id for ts, doc_id in rows if ts != oldest)
            del rows
            same_date = integer_range("ts", oldest, oldest, True)
            below_id = ID_MAX
            while True:  # the oldest date's messages, by id
                hits = searcher.search(
                    both(same_date, integer_range("id", ID_MIN, below_id, False)),
                    limit=SCAN_PAGE,
                    count=False,
                    order_by_field="id",
                ).hits
                ids = sorted(searcher.fast_field_values("id", [address for _, address in hits]), reverse=True)
                del hits
                yield from ids
                if len(ids) < SCAN_PAGE:
                    break
                below_id = ids[-1]
            page = both(integer_range("ts", TS_MIN, oldest, False))

    def refresh(self) -> None:
        with self._thread_lock:
            opened = list(self._open.values())
        for tenant in opened:
            tenant.index.reload()

    def ping(self) -> bool:
        return self.path.is_dir() and os.access(self.path, os.W_OK)

    def close(self) -> None:
        with self._thread_lock:
            self._open.clear()

    # --- AST -> Tantivy -----------------------------------------------------------

    def _translate(self, node: Node, tenant_id: int) -> Query:
        """The Tantivy query for `node`, run inside tenant `tenant_id`'s folder."""
        schema = self.schema
        if isinstance(node, MatchAll):
            return Query.all_query()
        if isinstance(node, TenantIs):
            # The folder is the tenant filter; a tree for another tenant is a bug.
            if node.tenant_id != tenant_id:
                raise ValueError(f"query for tenant {node.tenant_id} run in tenant {tenant_id}'s index")
            return Query.all_query()
        if isinstance(node, ParticipantIn):
            return Query.term_set_query(schema, "participants_addr", list(node.addresses))
        if isinstance(node, SenderIn):
            return Query.term_set_query(schema, "from_addr", list(node.addresses))
        if isinstance(node, IdIn):
            return Query.term_set_query(schema, "id", list(node.ids))
        if isinstance(node, Text):
            return self._text(node)
        if isinstance(node, HasAttachment):
            return Query.term_query(schema, "has_attachment", True)
        if isinstance(node, KindIs):
            return Query.term_query(schema, "kind", node.kind)
        if isinstance(node, InFolder):
            if node.mailboxes is None:
                return Query.term_query(schema, "folders", node.path)
            if not node.mailboxes:
                return Query.empty_query()
            wanted = [f"{mailbox}/{node.path}" for mailbox in node.mailboxes]
            return Query.term_set_query(schema, "mailbox_folders", wanted)
        if isinstance(node, DateRange):
            if node.start is None and node.end is None:
                return Query.all_query()
            lower = _micros(node.start) if node.start else None
            upper = _micros(node.end) if node.end else None
            if lower is not None and upper is not None and lower >= upper:
                return Query.empty_query()
            return Query.range_query(schema, "ts", tantivy.FieldType.Integer, lower, upper, True, upper is None)
        if isinstance(node, Not):
            return self._boolean(Query.all_query(), [], [node.child], tenant_id)
        if isinstance(node, And):
            # TenantIs is already the folder: leave its match-all out of the intersection.
            children = [c for c in node.children if not (isinstance(c, TenantIs) and c.tenant_id == tenant_id)]
            positive = [c for c in children if not isinstance(c, Not)]
            negative = [c.child for c in children if isinstance(c, Not)]
            return self._boolean(None, positive, negative, tenant_id)
        if isinstance(node, Or):
            return Query.boolean_query([(Occur.Should, self._translate(c, tenant_id)) for c in node.children])
        raise TypeError(f"unknown query node {node!r}")

    def _boolean(self, base: Query | None, positive: list[Node], negative: list[Node], tenant_id: int) -> Query:
        clauses = [(Occur.Must, self._translate(c, tenant_id)) for c in positive]
        if base is not None or not clauses:
            clauses.append((Occur.Must, base or Query.all_query()))
        clauses += [(Occur.MustNot, self._translate(c, tenant_id)) for c in negative]
        return Query.boolean_query(clauses)

    def _text(self, node: Text) -> Query:
        targets = FIELD_TARGETS[node.field]
        if node.hidden:
            targets += tuple(hidden_field(t) for t in targets if t in HIDDEN_CAPABLE)
        address = exact_address(node.field, node.value)
        if address:
            queries = [Query.term_query(self.schema, f"{f}_addr", address) for f in targets]
        else:
            tokens = self.analyzer.analyze(node.value)
            if not tokens:
                return Query.empty_query()
            if len(tokens) == 1:
                queries = [Query.term_query(self.schema, f, tokens[0]) for f in targets]
            else:
                queries = [Query.phrase_query(self.schema, f, tokens) for f in targets]
        if len(queries) == 1:
            return queries[0]
        return Query.boolean_query([(Occur.Should, q) for q in queries])


def _warn_if_upgraded(root: Path) -> None:
    """An older schema's folders and none of this one: the index starts empty."""
    older = sorted(p.name for p in root.glob("v*") if p.is_dir() and p.name != SCHEMA_VERSION)
    if older:
        log.warning(
            "search schema %s is new: its index in %s starts empty (was %s); the workers index every message "
            "again (migrations archive 0004 and 0007), and the old folders can be deleted once the backlog is empty",
            SCHEMA_VERSION, root, ", ".join(older),
        )  # fmt: skip


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock, waited for at most `timeout` seconds (then the index is unavailable)."""
    try:
        with file_lock(path, timeout):
            yield
    except LockTimeout as error:
        raise SearchUnavailable(f"the embedded index stayed locked for {timeout:.0f}s") from error
