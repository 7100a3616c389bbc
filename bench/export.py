"""An eDiscovery export's memory at 100,000 messages (issue 19: "memory stays flat").

    .venv/bin/python bench/export.py                      # 100,000 messages, about 10-20 min on 2 cores
    .venv/bin/python bench/export.py --messages 20000     # quicker

Archives N journal reports on a fresh embedded-default data folder (stored as
the ingest stores them, then the worker's `process_deliveries` and
`index_pending`), one in ten with the word "sampled" in its subject.  Then
builds two eDiscovery exports (eml-zip), each in a fresh child process: the
baseline, `subject:sampled` (N/10 messages), and everything (N messages).
For each it prints the child's peak RSS (the whole process: Python, SQLite,
the search engine's own memory, zlib) and tracemalloc's peak of Python
allocations during the build, and the ratio of the full export to the
tenth.  Flat memory is a ratio near 1; memory that grows with the count is a
ratio near 10.  The ZIP's files are checked against the manifest's hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker import report  # noqa: E402

BATCH = 1000


def embedded_env(data: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    env.update(ARCHIVA_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    return env


def setup_django(data: Path) -> None:
    os.environ.clear()
    os.environ.update(embedded_env(data))
    import django

    django.setup()


def fill(data: Path, messages: int) -> None:
    """The archive: `messages` journal reports, archived and indexed."""
    setup_django(data)
    from archive.tasks import index_pending, process_deliveries
    from ingest.delivery import PUBLISH_CHUNK
    from ingest.directory import Route
    from ingest.record import Envelope, Job, commit_batch, flush_paths
    from tenants.actions import create_tenant
    from tenants.models import User

    owner = User.objects.create_user(email="owner@contoso.com", password=None)
    tenant = create_tenant("Bench", owner)
    route = Route(tenant.id, tenant.bucket, tenant.region, None)
    rng = random.Random(5)
    started = time.perf_counter()
    for start in range(0, messages, BATCH):
        jobs = []
        for n in range(start, min(start + BATCH, messages)):
            raw = report(n, rng)
            if n % 10 == 0:
                raw = raw.replace(b"Subject: ", b"Subject: sampled ")
            envelope = Envelope("ndr@contoso.com", "127.0.0.1", "bench", "TLSv1.3", "bench")
            envelope.add_recipient(route, "journal@archive.archiva.com")
            jobs.append(Job(n, envelope, raw, hashlib.sha256(raw).hexdigest(), len(raw)))
        outcomes, ids = commit_batch(jobs, flush_paths())
        assert all(error is None for _, error in outcomes), outcomes
        for chunk in range(0, len(ids), PUBLISH_CHUNK):
            process_deliveries.run(ids[chunk : chunk + PUBLISH_CHUNK])
        index_pending.run()
        done = min(start + BATCH, messages)
        rate = done / (time.perf_counter() - started)
        print(f"\r  archived and indexed {done:,} of {messages:,} ({rate:,.0f} msgs/s)", end="", flush=True)
    print()


def export(data: Path, query: str) -> None:
    """In a child process: build one export of `query` and print what it cost, as JSON."""
    setup_django(data)
    import tracemalloc
    import zipfile

    from compliance import exports
    from compliance.models_export import Export
    from tenants.access import membership_for
    from tenants.models import User

    membership = membership_for(User.objects.get(email="owner@contoso.com"))
    made = exports.create_export(membership, query, "eml-zip")
    tracemalloc.start()
    started = time.perf_counter()
    state = exports.build_export(made.pk)
    seconds = time.perf_counter() - started
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    made = Export.objects.get(pk=made.pk)
    assert state == Export.State.DONE, (state, made.error)
    checked = verify(made, zipfile)
    print(
        json.dumps(
            {
                "total": made.total,
                "seconds": seconds,
                "python_peak": python_peak,
                "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "checked": checked,
            }
        )
    )


def verify(made, zipfile) -> int:  # noqa: ANN001 - bench helper
    """Every file in the ZIP has the SHA-256 its manifest row gives."""
    import csv
    import io

    from compliance import exports

    with tempfile.TemporaryFile() as copy:
        for piece in exports.download_chunks(made):
            copy.write(piece)
        copy.seek(0)
        with zipfile.ZipFile(copy) as archive:
            rows = list(csv.DictReader(io.TextIOWrapper(archive.open("manifest.csv"), "utf-8")))
            for row in rows:
                assert hashlib.sha256(archive.read(row["file"])).hexdigest() == row["sha256"], row
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--fill", metavar="DATA", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("DATA", "QUERY"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.fill:
        fill(Path(opts.fill), opts.messages)
        return
    if opts.child:
        export(Path(opts.child[0]), opts.child[1])
        return

    data = Path(tempfile.mkdtemp(prefix="archiva-export-bench-"))
    try:
        env = embedded_env(data)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        print(f"bench/export.py: {opts.messages:,} journal reports, embedded default, exports as eml-zip")
        fill_started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--fill", str(data), "--messages", str(opts.messages)], cwd=ROOT, check=True
        )
        print(f"  archive filled in {time.perf_counter() - fill_started:.0f} s")
        results = {}
        for label, query in (("tenth", "subject:sampled"), ("all", "")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(data), query],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[label]
            print(
                f"  export {label:>5}: {r['total']:>7,} messages in {r['seconds']:6.1f} s"
                f"  peak RSS {r['rss_peak'] / 1e6:7.1f} MB"
                f"  Python peak {r['python_peak'] / 1e6:6.2f} MB  ({r['checked']:,} files match the manifest)"
            )
        tenth, whole = results["tenth"], results["all"]
        rss_ratio = whole["rss_peak"] / tenth["rss_peak"]
        print(f"  ratio all / tenth, peak RSS      {rss_ratio:5.2f}   (flat: ~1; growing: ~10)")
        print(f"  ratio all / tenth, Python peak   {whole['python_peak'] / tenth['python_peak']:5.2f}")
    finally:
        if opts.keep:
            print(f"  data kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
