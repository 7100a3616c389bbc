"""Search test support: an Elasticsearch-API server for the session, backends
for each engine, and a small corpus whose documents tests name instead of ids.

The Elasticsearch side uses ARCHIVA_TEST_SEARCH_URL or ARCHIVA_SEARCH_URL
when one is set (a real cluster), otherwise starts `noida-db` on a free port
with a temporary data folder and stops it at the end of the session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from search.backends.base import Scope, SearchBackend
from search.document import SearchDocument
from tests.servers import free_port, missing

HOW_TO_GET_ES = (
    "pip install -r requirements-dev.txt (provides noida-db), "
    "or point ARCHIVA_TEST_SEARCH_URL at an Elasticsearch cluster"
)

# Ids and tenants unique for the whole session, so that tests can share one
# Elasticsearch index (as production shares one per region) without seeing
# each other.
_ids = itertools.count(1_000)
_tenants = itertools.count(100)


_test_tenants: list[int] = []  # made by the running test, removed after it


def next_tenant() -> int:
    tenant_id = next(_tenants)
    _test_tenants.append(tenant_id)
    return tenant_id


def shared_tenant() -> int:
    """A tenant for a module-scoped corpus, which removes it itself."""
    return next(_tenants)


def _noida_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("noida-db")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("noida-db")


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback test server
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def elasticsearch_url():
    """An Elasticsearch-API URL for the session; fails in CI, skips elsewhere, when none can be had."""
    url = os.environ.get("ARCHIVA_TEST_SEARCH_URL") or os.environ.get("ARCHIVA_SEARCH_URL")
    if url:
        yield url
        return
    binary = _noida_binary()
    if not binary:
        missing("Elasticsearch API (noida-db)", HOW_TO_GET_ES)
    data_dir = tempfile.mkdtemp(prefix="archiva-noida-")
    port = free_port()
    started = subprocess.run(
        [binary, "up", "--only", "elasticsearch", "--elasticsearch-port", str(port), "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if started.returncode != 0:
            missing("Elasticsearch API (noida-db)", f"`noida-db up` failed: {started.stderr[-500:]}")
        try:
            _wait_http(url)
        except TimeoutError as error:
            missing("Elasticsearch API (noida-db)", str(error))
        yield url
    finally:
        subprocess.run([binary, "down", "--data-dir", data_dir], capture_output=True, timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def elasticsearch_backend(elasticsearch_url):
    """One index for the whole session, under a unique name, dropped at the end."""
    from search.backends.elastic import ElasticsearchBackend

    backend = ElasticsearchBackend(
        elasticsearch_url, index=f"archiva-test-{uuid.uuid4().hex[:10]}-messages", refresh="wait_for"
    )
    backend.ensure_index()
    yield backend
    backend.drop_index()
    backend.close()


def embedded_backend(path: Path) -> SearchBackend:
    from search.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(path, lock_timeout=5.0, writer_heap=16_000_000)


@pytest.fixture(scope="session", params=["embedded", "elasticsearch"])
def engine(request, tmp_path_factory) -> SearchBackend:
    """One backend per engine for the session; tests keep apart by tenant, as in production."""
    if request.param == "embedded":
        engine = embedded_backend(tmp_path_factory.mktemp("index"))
        yield engine
        engine.close()
    else:
        yield request.getfixturevalue("elasticsearch_backend")


@pytest.fixture
def backend(engine) -> SearchBackend:
    """The engine for one test. Afterwards the tenants the test made are
    removed from Elasticsearch, whose emulator scans every document per query."""
    before = len(_test_tenants)
    yield engine
    if engine.name == "elasticsearch":
        for tenant_id in _test_tenants[before:]:
            engine.delete_tenant(tenant_id)
    del _test_tenants[before:]


def make_doc(tenant_id: int, doc_id: int | None = None, **fields) -> SearchDocument:
    values = {
        "id": doc_id if doc_id is not None else next(_ids),
        "tenant_id": tenant_id,
        "version": 1,
        "date": datetime(2024, 1, 1, tzinfo=UTC),
        "from_": [],
        "to": [],
        "cc": [],
        "bcc": [],
        "recipients": [],
        "subject": "",
        "body": "",
        "attachment_names": [],
        "attachment_text": "",
        "has_attachment": False,
        "size": 1000,
    }
    values.update(fields)
    return SearchDocument(**values)


@dataclass
class Corpus:
    """Named documents of one tenant in one backend."""

    backend: SearchBackend
    tenant_id: int = field(default_factory=next_tenant)
    docs: dict[str, SearchDocument] = field(default_factory=dict)

    def add(self, name: str, **fields) -> SearchDocument:
        doc = make_doc(self.tenant_id, **fields)
        self.docs[name] = doc
        return doc

    def index(self) -> Corpus:
        self.backend.index(list(self.docs.values()))
        return self

    def names(self, ids: list[int]) -> list[str]:
        by_id = {doc.id: name for name, doc in self.docs.items()}
        return [by_id.get(i, f"<foreign {i}>") for i in ids]

    def find(self, query, addresses: list[str] | None = None, **paging) -> list[str]:
        """Names of the hits, in result order (newest first)."""
        hits = self.backend.search(Scope(self.tenant_id, addresses), query, **paging)
        return self.names(hits.ids)


def at(text: str) -> datetime:
    """'2024-03-01 10:00' in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
