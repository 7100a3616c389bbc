"""The archive side of a Microsoft 365 import: store mailbox items, archive and index them.

    .venv/bin/python bench/mailbox_items.py [--items 3000] [--mailboxes 10] [--batch 100]
    .venv/bin/python bench/mailbox_items.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

What an import calls for what Graph gave it (`archive.items.store_items`,
in batches: durable on return), then exactly what a Celery worker runs for
the deliveries it publishes (the `process_deliveries` task body in the
ingest's publishing chunks, then `index_pending`), in this one process, on
a fresh data folder (the embedded default unless --database-url names an
empty PostgreSQL server database to create a scratch database on).  A third
of the mail is also journaled first, so the import merges into existing
messages as it does for a tenant that journaled before it connected.  Then
the same items stored again (a resumed import), which must store nothing.
No Graph: the import's own speed is the import's bench.  The issue's target
is >= 200 messages/s end to end for the whole import.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = "invoice quarterly budget meeting contract renewal pricing forecast shipment audit travel hiring".split()
FOLDERS = ["Inbox", "Inbox/Projects", "Inbox/Projects/Q3", "Sent Items", "Archive/2025", "Archive/2026"]


def original(n: int, rng: random.Random) -> tuple[str, bytes]:
    mid = f"<{uuid.uuid4()}@contoso.com>"
    subject = " ".join(rng.sample(WORDS, 3)) + f" #{n}"
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 400)))
    rcpts = [f"user{rng.randint(1, 500)}@fabrikam.com" for _ in range(rng.randint(1, 4))]
    raw = (
        f"From: Alice <alice{rng.randint(1, 200)}@contoso.com>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    return mid, raw.encode()


def journal_report(mid: str, raw: bytes) -> bytes:
    return (
        b"From: journal@contoso.com\r\nTo: journal@archive.archiva.com\r\nSubject: report\r\n"
        b'X-MS-Journal-Report:\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSender: alice@contoso.com\r\nMessage-Id: "
        + mid.encode()
        + b"\r\nTo: user1@fabrikam.com\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        + raw
        + b"\r\n--b1--\r\n"
    )


def environment(database_url: str | None) -> tuple[dict[str, str], Path, str | None]:
    data = Path(tempfile.mkdtemp(prefix="archiva-items-bench-"))
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    env.update(ARCHIVA_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    scratch = None
    if database_url:
        import psycopg

        scratch = f"archiva_items_bench_{os.getpid()}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {scratch}")
        env["DATABASE_URL"] = database_url.rsplit("/", 1)[0] + "/" + scratch
    return env, data, scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="items per store_items call")
    parser.add_argument("--database-url", help="a PostgreSQL server to make a scratch database on")
    opts = parser.parse_args()

    env, data, scratch = environment(opts.database_url)
    os.environ.clear()
    os.environ.update(env)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        run(opts)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if scratch and opts.database_url:
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(opts.database_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {scratch}")


def run(opts: argparse.Namespace) -> None:
    from archive.items import Item, store_items
    from archive.models import Message
    from archive.tasks import index_pending, process_deliveries
    from ingest.delivery import PUBLISH_CHUNK
    from ingest.directory import Route
    from ingest.models import Delivery
    from ingest.record import Envelope, Job, commit_batch, flush_paths
    from tenants.actions import create_tenant
    from tenants.models import User

    tenant = create_tenant("Bench", User.objects.create_user(email="bench@example.com", password=None))
    rng = random.Random(5)
    mails = [original(n, rng) for n in range(opts.items)]
    items = [
        Item("mail", f"user{n % opts.mailboxes}@contoso.com", rng.choice(FOLDERS), f"AAMkAD{n:08d}", b"X: 1\r\n" + raw)
        for n, (_, raw) in enumerate(mails)
    ]

    # A third journaled before the import (the ingest's own committer step).
    route = Route(tenant.id, tenant.bucket, tenant.region, None)
    jobs = []
    for n, (mid, raw) in enumerate(mails[::3]):
        report = journal_report(mid, raw)
        envelope = Envelope("ndr@contoso.com", "127.0.0.1", "bench", "TLSv1.3", "bench")
        envelope.add_recipient(route, "journal@archive.archiva.com")
        jobs.append(Job(n, envelope, report, hashlib.sha256(report).hexdigest(), len(report)))
    _, journal_ids = commit_batch(jobs, flush_paths())
    for chunk in range(0, len(journal_ids), PUBLISH_CHUNK):
        process_deliveries.run(journal_ids[chunk : chunk + PUBLISH_CHUNK])
    index_pending.run()

    started = time.perf_counter()
    queue_ids: list[str] = []
    for start in range(0, len(items), opts.batch):
        queue_ids += store_items(tenant, items[start : start + opts.batch])
    stored_at = time.perf_counter()
    ids = list(Delivery.objects.filter(queue_id__in=queue_ids).order_by("pk").values_list("pk", flat=True))
    for chunk in range(0, len(ids), PUBLISH_CHUNK):
        process_deliveries.run(ids[chunk : chunk + PUBLISH_CHUNK])
    archived_at = time.perf_counter()
    indexed = 0
    while done := index_pending.run():
        indexed += done
    finished = time.perf_counter()

    again = time.perf_counter()
    for start in range(0, len(items), opts.batch):
        store_items(tenant, items[start : start + opts.batch])
    resumed = time.perf_counter() - again

    archived = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.ARCHIVED).count()
    messages = Message.objects.filter(tenant=tenant).count()
    database = "PostgreSQL" if opts.database_url else "embedded default (SQLite)"
    n = len(items)
    print(f"bench/mailbox_items.py: {n} mail items in {opts.mailboxes} mailboxes, batches of {opts.batch}, {database}")
    print(f"  store_items (durable on return)           {n / (stored_at - started):8.0f} items/s")
    print(f"  archive (verify, parse, merge, store)     {n / (archived_at - stored_at):8.0f} items/s")
    print(f"  index ({indexed} messages, batched)        {indexed / max(finished - archived_at, 1e-9):8.0f} msgs/s")
    print(f"  stored to searchable, one process         {n / (finished - started):8.0f} items/s   (target >= 200)")
    print(f"  storing them all again (resumed import)   {n / resumed:8.0f} items/s, nothing new")
    expected = n  # a journaled third merges: one Message per original
    if archived != n or messages != expected or Delivery.objects.filter(tenant=tenant).count() != n + len(jobs):
        print(f"  WRONG: {archived} of {n} archived, {messages} messages (expected {expected})")
        sys.exit(1)


if __name__ == "__main__":
    main()
