"""Elasticsearch (8.x/9.x API) for deployments that set ARCHIVA_SEARCH_URL.

* One index per region, reached through an alias (`archiva-us-messages` ->
  `archiva-us-messages-v3`), created from an index template with explicit,
  strict mappings; a new mapping version reindexes behind the alias.
* The tenant is the routing key of every document and request (`_routing`
  is required by the mapping), and the tenant filter comes from
  SearchBackend's one scoping place like every other filter.
* Bulk indexing with external versioning (`external_gte` on
  SearchDocument.version): an older version never overwrites a newer one,
  the same version replaces (re-index after a parser fix).
* The query is translated from the AST into bool/term/terms/match_phrase/range
  clauses. No user text ever reaches query_string.
* Refresh policy from ARCHIVA_SEARCH_REFRESH: "false" (default, the index's
  refresh interval), "wait_for" (tests, read-your-writes) or "true".
* Connection trouble, timeouts, 429 and 5xx raise SearchUnavailable so that
  callers retry with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import elastic_transport
from elasticsearch import ApiError, Elasticsearch, helpers

from search.backends.base import (
    NEWEST,
    OLDEST,
    RELEVANCE,
    Hits,
    ScopedQuery,
    SearchBackend,
    SearchError,
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

# v2: exact addresses in top-level `<field>_addr` keyword fields;
# v3: Bcc and envelope-only recipients in `hidden_<field>` fields of their own;
# v4: kind and folders (mailbox items, archive.items)
MAPPING_VERSION = "v4"
REFRESH_POLICIES = ("false", "wait_for", "true")
BULK_CHUNK = 500
SCAN_PAGE = 1000
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}

ANALYSIS = {
    "tokenizer": {
        # Anything that is not a letter or digit separates words, so
        # alice.smith@contoso.com is alice, smith, contoso, com (as embedded).
        "archiva_split": {"type": "pattern", "pattern": "[^\\p{L}\\p{N}]+"},
    },
    "analyzer": {
        "archiva_text": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]},
        "archiva_split": {"type": "custom", "tokenizer": "archiva_split", "filter": ["lowercase", "asciifolding"]},
    },
}

# Address fields: the words of addresses and display names (from:contoso.com,
# from:alice) and, in `<field>_addr`, the exact lower-cased addresses found in
# them (from:alice@contoso.com).
_ADDRESS = {"type": "text", "analyzer": "archiva_split"}
_EXACT = {"type": "keyword", "ignore_above": 512}
ADDRESS_FIELDS = {"from": "from_", "to": "to", "cc": "cc", "bcc": "bcc", "recipients": "recipients"}
HIDDEN_FIELDS = tuple(hidden_field(name) for name in HIDDEN_CAPABLE)
MAPPINGS = {
    "dynamic": "strict",
    "_routing": {"required": True},
    "properties": {
        "id": {"type": "long"},
        "tenant_id": {"type": "long"},
        "version": {"type": "long", "index": False},
        "date": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
        **{field: _ADDRESS for field in ADDRESS_FIELDS},
        **{f"{field}_addr": _EXACT for field in ADDRESS_FIELDS},
        **{field: _ADDRESS for field in HIDDEN_FIELDS},
        **{f"{field}_addr": _EXACT for field in HIDDEN_FIELDS},
        "participants": _EXACT,
        "subject": {"type": "text", "analyzer": "archiva_text"},
        "body": {"type": "text", "analyzer": "archiva_text"},
        "attachment_names": {"type": "text", "analyzer": "archiva_split"},
        "attachment_text": {"type": "text", "analyzer": "archiva_text"},
        "has_attachment": {"type": "boolean"},
        "size": {"type": "long"},
        "kind": {"type": "keyword"},
        # Every folder with its ancestors (search.document.folder_terms); a
        # mailbox path runs to 1,300 characters, far below a keyword's limit.
        "folders": {"type": "keyword", "ignore_above": 8000},
        "mailbox_folders": {"type": "keyword", "ignore_above": 8000},
    },
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class ElasticsearchBackend(SearchBackend):
    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        index: str = "archiva-us-messages",
        refresh: str = "false",
        shards: int = 1,
        replicas: int = 0,
        timeout: float = 10.0,
        client: Elasticsearch | None = None,
    ):
        if refresh not in REFRESH_POLICIES:
            raise ValueError(f"refresh must be one of {REFRESH_POLICIES}, got {refresh!r}")
        self.alias = index
        self.concrete = f"{index}-{MAPPING_VERSION}"
        self.refresh_policy = refresh
        self.shards, self.replicas = shards, replicas
        self.es = client or Elasticsearch(url, request_timeout=timeout, max_retries=1, retry_on_timeout=False)
        self._ready = False

    # --- index lifecycle ----------------------------------------------------------

    def template(self) -> dict[str, Any]:
        return {
            "index_patterns": [f"{self.alias}-*"],
            "template": {
                "settings": {
                    "number_of_shards": self.shards,
                    "number_of_replicas": self.replicas,
                    "analysis": ANALYSIS,
                },
                "mappings": MAPPINGS,
            },
        }

    def ensure_index(self) -> None:
        """Install the template and create the index behind the alias, once per process."""
        if self._ready:
            return
        with _translated_errors():
            self.es.indices.put_index_template(name=self.alias, **self.template())
            if not self.es.indices.exists_alias(name=self.alias):
                self._create_index(aliases={self.alias: {"is_write_index": True}})
            elif not self.es.indices.exists(index=self.concrete):
                self._move_alias()
        self._ready = True

    def _create_index(self, **options: Any) -> None:
        """Create this version's index; another process (web, worker, ingest) starting too may have just done so."""
        try:
            self.es.indices.create(index=self.concrete, **options)
        except ApiError as error:
            if error.meta.status != 400 or "already_exists" not in str(error):
                raise

    def _move_alias(self) -> None:
        """An older mapping is behind the alias: put a new, empty index there (`manage.py reindex` fills it)."""
        older = list(self.es.indices.get_alias(name=self.alias).body)
        self._create_index()
        self.es.indices.update_aliases(
            actions=[
                *({"remove": {"index": index, "alias": self.alias}} for index in older),
                {"add": {"index": self.concrete, "alias": self.alias, "is_write_index": True}},
            ]
        )
        log.warning(
            "search mapping %s is new: %s now points at an empty %s (was %s); run `manage.py reindex`",
            MAPPING_VERSION, self.alias, self.concrete, ", ".join(older),
        )  # fmt: skip

    def drop_index(self) -> None:
        """Delete the index and template (tests, tear-down of a deployment)."""
        with _translated_errors():
            self.es.options(ignore_status=404).indices.delete(index=self.concrete)
            self.es.options(ignore_status=404).indices.delete_index_template(name=self.alias)
        self._ready = False

    # --- writing ------------------------------------------------------------------

    def _index(self, docs: list[SearchDocument]) -> None:
        self.ensure_index()
        with _translated_errors():
            _, errors = helpers.bulk(
                self.es,
                (self._action(doc) for doc in docs),
                chunk_size=BULK_CHUNK,
                raise_on_error=False,
                raise_on_exception=True,
                refresh=self.refresh_policy,
            )
        assert isinstance(errors, list)  # stats_only is off: the failed items
        failures = [e for e in errors if _item_status(e) != 409]  # 409: a newer version is indexed
        if failures:
            statuses = {_item_status(e) for e in failures}
            message = f"{len(failures)} of {len(docs)} documents failed to index: {failures[0]!r}"
            if statuses & RETRYABLE_STATUS:
                raise SearchUnavailable(message)
            raise SearchError(message)

    def _action(self, doc: SearchDocument) -> dict[str, Any]:
        addresses = {field: getattr(doc, attribute) for field, attribute in ADDRESS_FIELDS.items()}
        for name, (shown, hidden) in split_hidden(doc).items():
            addresses[name], addresses[hidden_field(name)] = shown, hidden
        return {
            "_op_type": "index",
            "_index": self.alias,
            "_id": str(doc.id),
            "_routing": str(doc.tenant_id),
            "version": doc.version,
            "version_type": "external_gte",
            "_source": {
                "id": doc.id,
                "tenant_id": doc.tenant_id,
                "version": doc.version,
                "date": _iso(doc.date),
                **addresses,
                **{f"{field}_addr": addresses_in(values) for field, values in addresses.items()},
                "participants": doc.participants,
                "subject": doc.subject,
                "body": doc.body,
                "attachment_names": doc.attachment_names,
                "attachment_text": doc.attachment_text,
                "has_attachment": bool(doc.has_attachment),
                "size": doc.size,
                "kind": doc.kind,
                **dict(zip(("folders", "mailbox_folders"), folder_terms(doc.folders), strict=True)),
            },
        }

    def _delete(self, query: ScopedQuery) -> None:
        self.ensure_index()
        with _translated_errors():
            self.es.delete_by_query(
                index=self.alias,
                routing=str(query.tenant_id),
                query=self.translate(query.root),
                conflicts="proceed",
                refresh=self.refresh_policy != "false",
            )

    # --- reading ------------------------------------------------------------------

    SORT = ({"date": "desc"}, {"id": "desc"})
    SORTS = {
        NEWEST: SORT,
        OLDEST: ({"date": "asc"}, {"id": "asc"}),
        RELEVANCE: ("_score", *SORT),
    }

    def _search(self, query: ScopedQuery, offset: int, limit: int, sort: str = NEWEST) -> Hits:
        self.ensure_index()
        with _translated_errors():
            response = self.es.search(
                index=self.alias,
                routing=str(query.tenant_id),
                query=self.translate(query.root),
                sort=list(self.SORTS[sort]),
                from_=offset,
                size=limit,
                track_total_hits=True,
                source=False,
            )
        hits = response["hits"]
        return Hits(hits["total"]["value"], [int(hit["_id"]) for hit in hits["hits"]])

    def _scan(self, query: ScopedQuery) -> Iterator[int]:
        """search_after over (date, id): every match, no window limit."""
        self.ensure_index()
        translated = self.translate(query.root)
        after = None
        while True:
            with _translated_errors():
                page = self.es.search(
                    index=self.alias,
                    routing=str(query.tenant_id),
                    query=translated,
                    sort=list(self.SORT),
                    size=SCAN_PAGE,
                    source=False,
                    track_total_hits=False,
                    search_after=after,
                )["hits"]["hits"]
            for hit in page:
                yield int(hit["_id"])
            if len(page) < SCAN_PAGE:
                return
            after = page[-1]["sort"]

    def refresh(self) -> None:
        self.ensure_index()
        with _translated_errors():
            self.es.indices.refresh(index=self.alias)

    def ping(self) -> bool:
        try:
            return bool(self.es.ping())
        except (elastic_transport.TransportError, ApiError):
            return False

    def close(self) -> None:
        self.es.close()

    # --- AST -> query DSL ---------------------------------------------------------

    def translate(self, node: Node) -> dict[str, Any]:
        if isinstance(node, MatchAll):
            return {"match_all": {}}
        if isinstance(node, TenantIs):
            return {"term": {"tenant_id": node.tenant_id}}
        if isinstance(node, ParticipantIn):
            return {"terms": {"participants": list(node.addresses)}}
        if isinstance(node, SenderIn):
            return {"terms": {"from_addr": list(node.addresses)}}
        if isinstance(node, IdIn):
            return {"terms": {"id": list(node.ids)}}
        if isinstance(node, Text):
            return self._text(node)
        if isinstance(node, HasAttachment):
            return {"term": {"has_attachment": True}}
        if isinstance(node, KindIs):
            return {"term": {"kind": node.kind}}
        if isinstance(node, InFolder):
            if node.mailboxes is None:
                return {"term": {"folders": node.path}}
            return {"terms": {"mailbox_folders": [f"{mailbox}/{node.path}" for mailbox in node.mailboxes]}}
        if isinstance(node, DateRange):
            bounds = {}
            if node.start:
                bounds["gte"] = _iso(node.start)
            if node.end:
                bounds["lt"] = _iso(node.end)
            return {"range": {"date": bounds}} if bounds else {"match_all": {}}
        if isinstance(node, Not):
            return {"bool": {"must_not": [self.translate(node.child)]}}
        if isinstance(node, And):
            positive = [c for c in node.children if not isinstance(c, Not)]
            negative = [self.translate(c.child) for c in node.children if isinstance(c, Not)]
            # Words score (relevance order); scope, dates, kinds and flags only filter.
            scoring = (Text, And, Or)
            clause: dict[str, Any] = {"filter": [self.translate(c) for c in positive if not isinstance(c, scoring)]}
            scored = [self.translate(c) for c in positive if isinstance(c, scoring)]
            if scored:
                clause["must"] = scored
            if negative:
                clause["must_not"] = negative
            return {"bool": clause}
        if isinstance(node, Or):
            return {"bool": {"should": [self.translate(c) for c in node.children], "minimum_should_match": 1}}
        raise TypeError(f"unknown query node {node!r}")

    def _text(self, node: Text) -> dict[str, Any]:
        targets = FIELD_TARGETS[node.field]
        if node.hidden:
            targets += tuple(hidden_field(t) for t in targets if t in HIDDEN_CAPABLE)
        address = exact_address(node.field, node.value)
        if address:
            queries = [{"term": {f"{field}_addr": address}} for field in targets]
        else:
            # match_phrase analyses the value with the field's own analyzer;
            # one token is a term query, several a phrase.
            queries = [{"match_phrase": {field: node.value}} for field in targets]
        if len(queries) == 1:
            return queries[0]
        return {"bool": {"should": queries, "minimum_should_match": 1}}


def _item_status(item: dict[str, dict[str, Any]]) -> int | None:
    for result in item.values():
        status: int | None = result.get("status")
        return status
    return None


class _translated_errors:
    """Turn the client's connection and server errors into SearchUnavailable."""

    def __enter__(self) -> _translated_errors:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if error is None:
            return False
        if isinstance(error, elastic_transport.TransportError):
            raise SearchUnavailable(f"Elasticsearch unreachable: {error}") from error
        if isinstance(error, ApiError):
            if error.meta.status in RETRYABLE_STATUS:
                raise SearchUnavailable(f"Elasticsearch busy or failing: {error}") from error
            raise SearchError(f"Elasticsearch refused the request: {error}") from error
        if isinstance(error, helpers.BulkIndexError):
            raise SearchError(str(error)) from error
        return False
