"""One worker's archiving throughput: verify, unwrap, merge, store, index.

    .venv/bin/python bench/worker.py [--messages 2000] [--chunk 80]

Stores N journal reports the way the ingest does (content-addressed in the
tenant's bucket, a Delivery row each) on a fresh embedded-default data
folder, then runs exactly what a Celery worker runs for them — the
`process_deliveries` task body in the ingest's publishing chunks, then `index_pending` — in
this one process, and prints messages/s.  Baseline in the same run: the
parser alone on the same bytes (`parse_report`), the work no worker can
skip.  Target (issue 3): at least 200 messages/s for one worker.
"""

from __future__ import annotations

import argparse
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


def report(n: int, rng: random.Random) -> bytes:
    mid = f"<{uuid.uuid4()}@contoso.com>"
    subject = " ".join(rng.sample(WORDS, 3)) + f" #{n}"
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 400)))
    rcpts = [f"user{rng.randint(1, 500)}@fabrikam.com" for _ in range(rng.randint(1, 4))]
    original = (
        f"From: Alice <alice{rng.randint(1, 200)}@contoso.com>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    envelope = "".join(f"To: {r}\r\n" for r in rcpts) + f"Bcc: auditor{rng.randint(1, 9)}@contoso.com\r\n"
    return (
        "From: journal@contoso.com\r\nTo: journal@archive.archiva.com\r\nSubject: " + subject + "\r\n"
        'X-MS-Journal-Report:\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain\r\n\r\nSender: alice@contoso.com\r\nSubject: {subject}\r\n"
        f"Message-Id: {mid}\r\n{envelope}--b1\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--b1--\r\n"
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--chunk", type=int, default=0, help="deliveries per task (default: the ingest's PUBLISH_CHUNK, its largest)"
    )
    opts = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="archiva-worker-bench-"))
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    env.update(ARCHIVA_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    os.environ.clear()
    os.environ.update(env)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()

        from archive.parser.journal import parse_report
        from archive.tasks import index_pending, process_deliveries
        from ingest.delivery import PUBLISH_CHUNK
        from ingest.directory import Route
        from ingest.models import Delivery
        from ingest.record import Envelope, Job, commit_batch, flush_paths
        from tenants.actions import create_tenant
        from tenants.models import User

        tenant = create_tenant("Bench", User.objects.create_user(email="bench@example.com", password=None))
        route = Route(tenant.id, tenant.bucket, tenant.region, None)
        rng = random.Random(3)
        raws = [report(n, rng) for n in range(opts.messages)]
        import hashlib

        jobs = []
        for n, raw in enumerate(raws):
            envelope = Envelope("ndr@contoso.com", "127.0.0.1", "bench", "TLSv1.3", "bench")
            envelope.add_recipient(route, "journal@archive.archiva.com")
            jobs.append(Job(n, envelope, raw, hashlib.sha256(raw).hexdigest(), len(raw)))
        outcomes, ids = commit_batch(jobs, flush_paths())  # as the ingest's committer does
        assert all(error is None for _, error in outcomes), outcomes

        started = time.perf_counter()
        for raw in raws:
            parse_report(raw)
        parse_rate = len(raws) / (time.perf_counter() - started)

        started = time.perf_counter()
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            cProfile.runctx("process_deliveries.run(ids)", globals(), locals(), "/tmp/worker.prof")
            pstats.Stats("/tmp/worker.prof").sort_stats(os.environ.get("BENCH_PROFILE_SORT", "cumtime")).print_stats(30)
        # Chunks as the ingest publishes them under load (one task per chunk).
        size = opts.chunk or PUBLISH_CHUNK
        for chunk in range(0, len(ids), size):
            process_deliveries.run(ids[chunk : chunk + size])
        archived_at = time.perf_counter()
        indexed = index_pending.run()
        finished = time.perf_counter()
        archived = Delivery.objects.filter(status=Delivery.Status.ARCHIVED).count()
        total = finished - started
        print(f"bench/worker.py: {len(ids)} journal reports, embedded default, one process")
        print(f"  baseline: parse_report alone             {parse_rate:8.0f} msgs/s")
        task_rate = len(ids) / (archived_at - started)
        print(f"  the task (archive, index what it created) {task_rate:8.0f} msgs/s")
        print(f"  index_pending afterwards: {indexed} messages (merges, mailbox copies; 0 here)")
        print(f"  one worker, end to end                   {len(ids) / total:8.0f} msgs/s   (target >= 200)")
        print(f"  ratio to the parser alone                {len(ids) / total / parse_rate:8.2f}")
        if archived != len(ids):
            from django.db.models import Count

            print(f"  ONLY {archived} of {len(ids)} archived")
            print(list(Delivery.objects.values("status", "error").annotate(n=Count("id"))[:5]))
            sys.exit(1)
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
