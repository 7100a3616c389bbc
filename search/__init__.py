"""Search: one query language (search.query), one scoped interface
(search.backends.base.SearchBackend), an embedded and an Elasticsearch backend.

    from search import Scope, get_backend
    hits = get_backend().search(Scope(tenant.id, addresses=None), "from:alice has:attachment")
"""

from search.backends import (
    Hits,
    Scope,
    SearchBackend,
    SearchError,
    SearchUnavailable,
    get_backend,
    reset_backend,
)
from search.document import SearchDocument
from search.query import QueryError, parse

__all__ = [
    "Hits",
    "QueryError",
    "Scope",
    "SearchBackend",
    "SearchDocument",
    "SearchError",
    "SearchUnavailable",
    "get_backend",
    "parse",
    "reset_backend",
]
