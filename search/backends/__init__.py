"""Pick the search backend from settings: Elasticsearch when ARCHIVA_SEARCH_URL
is set, otherwise the embedded Tantivy index in DATA_DIR/index."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from search.backends.base import (
    Hits,
    Scope,
    ScopedQuery,
    SearchBackend,
    SearchError,
    SearchUnavailable,
)

__all__ = [
    "Hits",
    "Scope",
    "ScopedQuery",
    "SearchBackend",
    "SearchError",
    "SearchUnavailable",
    "create_backend",
    "get_backend",
    "reset_backend",
]

_lock = threading.Lock()
_cached: tuple[int, SearchBackend] | None = None


def create_backend() -> SearchBackend:
    """A new backend configured from Django settings."""
    from django.conf import settings

    url = getattr(settings, "ARCHIVA_SEARCH_URL", "") or ""
    if url:
        from search.backends.elastic import ElasticsearchBackend

        region = getattr(settings, "ARCHIVA_REGION", "us")
        return ElasticsearchBackend(
            url,
            index=getattr(settings, "ARCHIVA_SEARCH_INDEX", "") or f"archiva-{region}-messages",
            refresh=getattr(settings, "ARCHIVA_SEARCH_REFRESH", "false"),
            shards=getattr(settings, "ARCHIVA_SEARCH_SHARDS", 1),
            replicas=getattr(settings, "ARCHIVA_SEARCH_REPLICAS", 0),
            timeout=getattr(settings, "ARCHIVA_SEARCH_TIMEOUT", 10.0),
        )
    from search.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(Path(getattr(settings, "ARCHIVA_SEARCH_INDEX_DIR", None) or settings.DATA_DIR / "index"))


def get_backend() -> SearchBackend:
    """The process's backend. Re-created after a fork (Celery prefork,
    gunicorn), since neither a Tantivy reader nor an HTTP pool survives one."""
    global _cached
    with _lock:
        if _cached is None or _cached[0] != os.getpid():
            _cached = (os.getpid(), create_backend())
        return _cached[1]


def reset_backend() -> None:
    """Forget the cached backend (tests that change settings)."""
    global _cached
    with _lock:
        if _cached is not None and _cached[0] == os.getpid():
            _cached[1].close()
        _cached = None
