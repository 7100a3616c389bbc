"""Search benchmark: indexing throughput and query latency per backend.

    .venv/bin/python bench/search.py                  # 100,000 messages, every available backend
    .venv/bin/python bench/search.py --docs 1000000 --backends embedded

Generates a synthetic but realistic tenant (7,000 people with Zipf-distributed
activity, a 30,000-word Zipf vocabulary, 20% of messages with attachments,
three years of dates), indexes it through the public SearchBackend API in
batches of --batch messages (one process, as one worker would), and times a
fixed set of typical queries. Elasticsearch is used when ARCHIVA_SEARCH_URL
is set or noida-db is installed (its numbers measure noida-db, not a real
cluster).

Baseline, measured in the same run on the same messages: a naive SQLite
table queried with LIKE '%word%' over the same fields (what one would write
without a search engine), same scoping, same newest-first page and count.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.backends.base import Scope, SearchBackend  # noqa: E402
from search.document import SearchDocument  # noqa: E402
from search.query import And, DateRange, HasAttachment, Node, Not, Or, Text, parse  # noqa: E402

TENANT = 1
START = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 3 * 365 * 86400
SYLLABLES = "ka lo mi ra ten do vi sa pe tor qu an el is um ber shi nok gra fel".split()


# --- corpus -----------------------------------------------------------------------


class Corpus:
    """Deterministic synthetic mail of one tenant."""

    def __init__(self, seed: int = 7):
        rng = random.Random(seed)
        self.words = self._vocabulary(rng, 30_000)
        self.word_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.words))))
        internal = [f"{rng.choice(self.words)}.{rng.choice(self.words)}@contoso.com" for _ in range(2_000)]
        domains = [f"{rng.choice(self.words)}.com" for _ in range(300)]
        external = [f"{rng.choice(self.words)}@{rng.choice(domains)}" for _ in range(5_000)]
        self.people = internal + external
        rng.shuffle(self.people)
        self.people_weights = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(self.people))))
        self.seed = seed

    @staticmethod
    def _vocabulary(rng: random.Random, size: int) -> list[str]:
        seen: dict[str, None] = {}
        while len(seen) < size:
            seen.setdefault("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
        return list(seen)

    def _pick(self, rng, population, weights, k):
        total = weights[-1]
        return [population[bisect.bisect(weights, rng.random() * total)] for _ in range(k)]

    def documents(self, count: int, first_id: int = 1) -> Iterator[SearchDocument]:
        rng = random.Random(self.seed * 1_000_003 + first_id)
        for doc_id in range(first_id, first_id + count):
            yield self._document(rng, doc_id)

    def _document(self, rng: random.Random, doc_id: int) -> SearchDocument:
        words, weights = self.words, self.word_weights
        sender = self._pick(rng, self.people, self.people_weights, 1)[0]
        to = self._pick(rng, self.people, self.people_weights, rng.randint(1, 3))
        cc = self._pick(rng, self.people, self.people_weights, rng.choice((0, 0, 0, 1, 2)))
        bcc = self._pick(rng, self.people, self.people_weights, 1) if rng.random() < 0.05 else []
        body = self._pick(rng, words, weights, int(rng.lognormvariate(4.2, 0.7)) + 5)
        if rng.random() < 0.02:
            body[len(body) // 2 : len(body) // 2] = ["project", "falcon"]
        subject = " ".join(self._pick(rng, words, weights, rng.randint(3, 8)))
        if rng.random() < 0.3:
            subject = "Re: " + subject
        has_attachment = rng.random() < 0.2
        names, text = [], ""
        if has_attachment:
            names = [f"{rng.choice(words)}_{rng.choice(words)}.{rng.choice(('pdf', 'docx', 'xlsx', 'png'))}"]
            if rng.random() < 0.6:
                text = " ".join(self._pick(rng, words, weights, rng.randint(50, 400)))
        body_text = " ".join(body)
        return SearchDocument(
            id=doc_id,
            tenant_id=TENANT,
            version=1,
            date=START + timedelta(seconds=rng.randrange(SPAN_SECONDS)),
            from_=[sender, sender.split("@")[0].replace(".", " ").title()],
            to=to,
            cc=cc,
            bcc=bcc,
            recipients=sorted(set(to + cc + bcc)),
            subject=subject,
            body=body_text,
            attachment_names=names,
            attachment_text=text,
            has_attachment=has_attachment,
            size=len(body_text) + len(text) * 3 + 2_000,
        )

    def queries(self) -> list[tuple[str, Scope, str]]:
        """(label, scope, query): the fixed set of typical searches."""
        top_sender, second = self.people[0], self.people[1]
        user = Scope(TENANT, [self.people[3]])
        admin = Scope(TENANT)
        common, mid, rare = self.words[10], self.words[500], self.words[5000]
        return [
            ("everything (empty query)", admin, ""),
            ("a common word (~50% of mail)", admin, common),
            ("a word (~2%)", admin, mid),
            ("a rare word", admin, rare),
            ("a phrase", admin, '"project falcon"'),
            ("from: an address", admin, f"from:{top_sender}"),
            ("to: an address", admin, f"to:{second}"),
            ("a date range (1 month)", admin, "after:2023-03-01 before:2023-04-01"),
            ("has:attachment", admin, "has:attachment"),
            ("combination", admin, f"from:{top_sender} has:attachment after:2023-01-01 -{common}"),
            ("OR group + field", admin, f"({mid} OR {rare}) subject:{self.words[20]}"),
            ("plain user, everything", user, ""),
            ("plain user, a common word", user, common),
        ]


# --- baseline: naive SQLite LIKE scan ------------------------------------------


class LikeBaseline:
    """What one would write without a search engine: LIKE '%value%' over the columns."""

    COLUMNS = {
        "subject": "subject",
        "body": "body",
        "attachment_names": "attachment_names",
        "attachment_text": "attachment_text",
        "from": "from_",
        "to": "to_",
        "cc": "cc",
        "bcc": "bcc",
        "recipients": "recipients",
    }

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE m (id INTEGER PRIMARY KEY, tenant_id INT, date TEXT, from_ TEXT, to_ TEXT, cc TEXT,"
            " bcc TEXT, recipients TEXT, participants TEXT, subject TEXT, body TEXT, attachment_names TEXT,"
            " attachment_text TEXT, has_attachment INT)"
        )
        self.db.execute("CREATE INDEX m_order ON m (tenant_id, date DESC, id DESC)")

    def index(self, docs: list[SearchDocument]) -> None:
        rows = [
            (
                d.id,
                d.tenant_id,
                d.date.isoformat(),
                " ".join(d.from_),
                " ".join(d.to),
                " ".join(d.cc),
                " ".join(d.bcc),
                " ".join(d.recipients),
                " " + " ".join(sorted({a.lower() for a in d.from_ + d.recipients if "@" in a})) + " ",
                d.subject,
                d.body,
                " ".join(d.attachment_names),
                d.attachment_text,
                int(d.has_attachment),
            )
            for d in docs
        ]
        with self.db:
            self.db.executemany(f"INSERT INTO m VALUES ({','.join('?' * 14)})", rows)

    def search(self, scope: Scope, query: str, limit: int = 50) -> tuple[int, list[int]]:
        from search.query import FIELD_TARGETS

        def sql(node: Node) -> tuple[str, list]:
            if isinstance(node, Text):
                fields = [self.COLUMNS[f] for f in FIELD_TARGETS[node.field]]
                return "(" + " OR ".join(f"{c} LIKE ?" for c in fields) + ")", [f"%{node.value}%"] * len(fields)
            if isinstance(node, HasAttachment):
                return "has_attachment = 1", []
            if isinstance(node, DateRange):
                parts, args = [], []
                if node.start:
                    parts, args = ["date >= ?"], [node.start.isoformat()]
                if node.end:
                    parts, args = [*parts, "date < ?"], [*args, node.end.isoformat()]
                return "(" + " AND ".join(parts) + ")", args
            if isinstance(node, Not):
                inner, args = sql(node.child)
                return f"NOT {inner}", args
            if isinstance(node, And | Or):
                parts = [sql(child) for child in node.children]
                joiner = " AND " if isinstance(node, And) else " OR "
                return "(" + joiner.join(p for p, _ in parts) + ")", [a for _, args in parts for a in args]
            return "1", []

        where, args = sql(parse(query))
        where, args = f"tenant_id = ? AND {where}", [scope.tenant_id, *args]
        if scope.addresses:
            where += " AND (" + " OR ".join("participants LIKE ?" for _ in scope.addresses) + ")"
            args += [f"% {a} %" for a in scope.addresses]
        count = self.db.execute(f"SELECT count(*) FROM m WHERE {where}", args).fetchone()[0]  # noqa: S608
        ids = self.db.execute(
            f"SELECT id FROM m WHERE {where} ORDER BY date DESC, id DESC LIMIT ?",  # noqa: S608
            [*args, limit],
        ).fetchall()
        return count, [i for (i,) in ids]


# --- running ---------------------------------------------------------------------


@dataclass
class Timing:
    p50: float
    p95: float
    count: int


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_queries(search, queries, runs: int) -> dict[str, Timing]:
    results = {}
    for label, scope, query in queries:
        search(scope, query)  # warm-up
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            count = search(scope, query)
            samples.append((time.perf_counter() - started) * 1000)
        results[label] = Timing(percentile(samples, 0.5), percentile(samples, 0.95), count)
    return results


def index_all(corpus: Corpus, target, total: int, batch: int, label: str) -> float:
    """Feed `total` messages in batches; returns messages/s counting index() time only."""
    spent, done, last_report = 0.0, 0, time.monotonic()
    documents = corpus.documents(total)
    while done < total:
        docs = list(itertools.islice(documents, batch))
        started = time.perf_counter()
        target.index(docs)
        spent += time.perf_counter() - started
        done += len(docs)
        if time.monotonic() - last_report > 15:
            print(f"  {label}: {done:,}/{total:,} indexed, {done / spent:,.0f} msg/s so far", flush=True)
            last_report = time.monotonic()
    return total / spent


def single_document_rate(backend: SearchBackend, corpus: Corpus, count: int = 50) -> float:
    """One message per index() call (a worker that does not batch)."""
    docs = list(corpus.documents(count, first_id=50_000_000))
    started = time.perf_counter()
    for doc in docs:
        backend.index([doc])
    rate = count / (time.perf_counter() - started)
    backend.delete(TENANT, [d.id for d in docs])
    return rate


def elasticsearch_backend(url: str | None):
    from search.backends.elastic import ElasticsearchBackend

    stop = None
    if not url:
        binary = Path(sys.executable).with_name("noida-db")
        if not binary.exists():
            return None, None
        data_dir = tempfile.mkdtemp(prefix="bench-noida-")
        from tests.servers import free_port

        port = free_port()
        subprocess.run(
            [binary, "up", "--only", "elasticsearch", "--elasticsearch-port", str(port), "--data-dir", data_dir],
            check=True,
            capture_output=True,
        )
        url = f"http://127.0.0.1:{port}"

        def stop():
            subprocess.run([binary, "down", "--data-dir", data_dir], capture_output=True)
            shutil.rmtree(data_dir, ignore_errors=True)

    backend = ElasticsearchBackend(url, index=f"archiva-bench-{os.getpid()}-messages", timeout=300)
    for _ in range(100):
        if backend.ping():
            break
        time.sleep(0.1)
    backend.ensure_index()
    return backend, stop


def report(title: str, timings: dict[str, Timing], baseline: Baseline | None = None, docs: int = 0) -> None:
    print(f"\n{title}")
    header = f"  {'query':32s} {'hits':>9s} {'p50 ms':>8s} {'p95 ms':>8s}"
    if baseline:
        header += f" {'baseline p50 at this size':>26s} {'speed-up':>9s}"
    print(header)
    for label, timing in timings.items():
        line = f"  {label:32s} {timing.count:9,d} {timing.p50:8.1f} {timing.p95:8.1f}"
        if baseline:
            scaled = baseline.timings[label].p50 * docs / baseline.docs
            ratio = scaled / max(timing.p50, 0.01)
            line += f" {scaled:24,.0f}ms {ratio:8,.{0 if ratio >= 10 else 2}f}x"
        print(line)
    worst = max(t.p95 for t in timings.values())
    print(f"  worst p95: {worst:.1f} ms")


@dataclass
class Baseline:
    docs: int
    timings: dict[str, Timing]


def measure_baseline(corpus: Corpus, queries, work: Path, docs: int, runs: int) -> Baseline:
    """The naive LIKE scan on the first `docs` messages (a scan is linear, so
    its time is scaled by size when compared)."""
    like = LikeBaseline(work / "baseline.sqlite3")
    rate = index_all(corpus, like, docs, 5_000, "baseline")
    timings = time_queries(lambda scope, query: like.search(scope, query)[0], queries, runs)
    like.db.close()
    report(f"baseline: naive SQLite LIKE scan over {docs:,} messages (loaded at {rate:,.0f} msg/s)", timings)
    print("  compared below after scaling linearly to each backend's size (a LIKE scan reads every row)")
    return Baseline(docs, timings)


def bench_embedded(corpus, queries, work: Path, args, baseline) -> None:
    from search.backends.embedded import EmbeddedBackend

    embedded = EmbeddedBackend(work / "index")
    rate = index_all(corpus, embedded, args.docs, args.batch, "embedded")
    single = single_document_rate(embedded, corpus)
    print(
        f"\nembedded (Tantivy): indexed {args.docs:,} at {rate:,.0f} msg/s in batches of {args.batch}"
        f" (one process); {single:,.1f} msg/s with one message per call (a commit each)"
    )
    timings = time_queries(lambda s, q: embedded.search(s, q).count, queries, args.runs)
    report(f"embedded (Tantivy), {args.docs:,} messages", timings, baseline, args.docs)
    print(f"  index size: {_size(work / 'index') / 1e6:,.0f} MB")


def bench_elasticsearch(corpus, queries, args, baseline) -> None:
    url = os.environ.get("ARCHIVA_SEARCH_URL")
    es, stop = elasticsearch_backend(url)
    if es is None:
        print("\nelasticsearch: skipped (set ARCHIVA_SEARCH_URL or install noida-db)")
        return
    # noida-db emulates the API by scanning every document per query: keep it small.
    total = args.es_docs or (min(args.docs, 100_000) if url else 2_000)
    what = "a cluster at ARCHIVA_SEARCH_URL" if url else "noida-db, an API emulator: not a cluster's speed"
    try:
        rate = index_all(corpus, es, total, args.batch, "elasticsearch")
        es.refresh()
        print(f"\nelasticsearch ({what}): indexed {total:,} at {rate:,.0f} msg/s in batches of {args.batch}")
        timings = time_queries(lambda s, q: es.search(s, q).count, queries, args.runs if url else 3)
        report(f"elasticsearch ({what}), {total:,} messages", timings, baseline, total)
    finally:
        try:
            es.drop_index()
        finally:
            if stop:
                stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="messages in the tenant (default 100,000)")
    parser.add_argument("--backends", default="embedded,elasticsearch")
    parser.add_argument(
        "--es-docs", type=int, default=None, help="messages for Elasticsearch (default 100k, 2k on noida-db)"
    )
    parser.add_argument("--batch", type=int, default=500, help="messages per index() call")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query")
    parser.add_argument("--baseline-docs", type=int, default=20_000, help="messages for the LIKE-scan baseline")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="archiva-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus()
    queries = corpus.queries()
    backends = args.backends.split(",")
    print(
        f"Archiva search benchmark: {args.docs:,} messages in one tenant,"
        f" batches of {args.batch}, {os.cpu_count()} CPUs, p50/p95 over {args.runs} runs"
    )
    try:
        baseline = None
        if not args.no_baseline:
            baseline = measure_baseline(corpus, queries, work, min(args.baseline_docs, args.docs), args.baseline_runs)
        if "embedded" in backends:
            bench_embedded(corpus, queries, work, args, baseline)
        if "elasticsearch" in backends:
            bench_elasticsearch(corpus, queries, args, baseline)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
