"""What a message costs at rest: bucket bytes, PostgreSQL bytes and index bytes per message.

    .venv/bin/python bench/sizing.py [--messages 5000] [--size 20000]

Archives N journal reports of about SIZE bytes (varied text, as bench/worker.py
makes them, padded) the way the worker does, on PostgreSQL (a database made
for the run, dropped after) with the folder store and the embedded index in a
fresh data folder, then measures: the bucket folder's bytes, the growth of
every table's pg_total_relation_size (after VACUUM ANALYZE), and the index
folder's bytes; each per message and per million messages.  The figures
behind docs/operations.md, "Sizing".
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from worker import WORDS, report  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def padded(n: int, rng: random.Random, size: int) -> bytes:
    raw = report(n, rng)
    missing = size - len(raw)
    if missing <= 0:
        return raw
    filler = " ".join(rng.choice(WORDS) + str(rng.randint(0, 999)) for _ in range(missing // 9 + 1))[:missing]
    head, _, tail = raw.rpartition(b"\r\n--b1--")
    return head + filler.encode() + b"\r\n--b1--" + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    opts = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="archiva-sizing-"))
    name = f"archiva_sizing_{os.getpid()}"
    env = dict(os.environ)
    for variable in ("CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL", "ARCHIVA_STORAGE"):
        env.pop(variable, None)
    env.update(
        ARCHIVA_DATA_DIR=str(data),
        DATABASE_URL=f"{opts.server}/{name}",
        DJANGO_SETTINGS_MODULE="archiva.settings",
        ARCHIVA_LOG_LEVEL="warning",
    )
    os.environ.clear()
    os.environ.update(env)
    subprocess.run(["psql", f"{opts.server}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from django.db import connection

        from archive.tasks import index_pending, process_deliveries
        from ingest.delivery import PUBLISH_CHUNK
        from ingest.directory import Route
        from ingest.models import Delivery
        from ingest.record import Envelope, Job, commit_batch, flush_paths
        from tenants.actions import create_tenant
        from tenants.models import User

        def database_bytes() -> int:
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
                cursor.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'"
                )
                return int(cursor.fetchone()[0])

        tenant = create_tenant("Sizing", User.objects.create_user(email="sizing@example.com", password=None))
        route = Route(tenant.id, tenant.bucket, tenant.region, None)
        rng = random.Random(7)
        db_before = database_bytes()
        raw_bytes = 0
        ids: list[int] = []
        for start in range(0, opts.messages, 500):
            jobs = []
            for n in range(start, min(start + 500, opts.messages)):
                raw = padded(n, rng, opts.size)
                raw_bytes += len(raw)
                envelope = Envelope("ndr@contoso.com", "127.0.0.1", "bench", "TLSv1.3", "bench")
                envelope.add_recipient(route, "journal@archive.archiva.com")
                jobs.append(Job(n, envelope, raw, hashlib.sha256(raw).hexdigest(), len(raw)))
            outcomes, batch = commit_batch(jobs, flush_paths())
            assert all(error is None for _, error in outcomes), outcomes
            ids += batch
        for chunk in range(0, len(ids), PUBLISH_CHUNK):
            process_deliveries.run(ids[chunk : chunk + PUBLISH_CHUNK])
        index_pending.run()
        archived = Delivery.objects.filter(status=Delivery.Status.ARCHIVED).count()
        assert archived == len(ids), f"only {archived} of {len(ids)} archived"
        connection.close()
        from django.db import connection as fresh

        fresh.ensure_connection()
        db_after = database_bytes()
        bucket = folder_bytes(data / "buckets")
        index = folder_bytes(data / "index")
        n = len(ids)
        print(f"bench/sizing.py: {n} journal reports, {raw_bytes / n:,.0f} bytes each on average")
        for label, total in (
            ("bucket (reports + archived copies)", bucket),
            ("PostgreSQL (all tables)", db_after - db_before),
            ("embedded index", index),
        ):
            print(f"  {label:38} {total / n:10,.0f} bytes/message  {total / n * 1e6 / 1e9:8.1f} GB per million")
        print(f"  bucket bytes / report bytes           {bucket / raw_bytes:10.2f}")
        print(f"  index bytes / report bytes            {index / raw_bytes:10.2f}")
    finally:
        from django.db import connections

        connections.close_all()
        subprocess.run(["psql", f"{opts.server}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
