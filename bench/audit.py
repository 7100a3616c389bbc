"""The audit hash chain under concurrent readers (issue 19).

    .venv/bin/python bench/audit.py                        # 8 processes x 500 events, PostgreSQL on 127.0.0.1
    .venv/bin/python bench/audit.py --processes 16 --events 1000

Every search, view and download writes an audit event linked into its
tenant's hash chain (`tenants.audit.record_event`): a short transaction that
locks the tenant's chain head row, inserts the event and moves the head.
Readers of one tenant therefore queue on that row for the length of the
transaction.  This measures what that costs where it matters, on
PostgreSQL (the scale configuration; the embedded SQLite serializes every
write anyway): P processes each record E search events for ONE tenant, as
P people searching at once, and the same processes record the same events
as plain INSERTs without the chain (the baseline: what an audit row costs
at all).  Prints events/s of both, the ratio, and each event's latency
(median, 99th percentile), then checks that the chain is intact.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def setup(url: str) -> None:
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    import django

    django.setup()


def writer(url: str, tenant_id: int, user_id: int, count: int, chained: bool, start: multiprocessing.Event) -> list:  # type: ignore[valid-type]
    setup(url)
    from django.utils import timezone

    from tenants.audit import record_event
    from tenants.models import AuditEvent, Membership

    membership = Membership.objects.select_related("user").get(tenant_id=tenant_id, user_id=user_id)
    latencies = []
    start.wait()
    for n in range(count):
        began = time.perf_counter()
        if chained:
            record_event(membership, AuditEvent.Action.SEARCH, {"q": f"invoice {n}", "hits": n}, ip="10.0.0.7")
        else:
            AuditEvent.objects.create(
                tenant_id=tenant_id,
                user_id=user_id,
                actor_email=membership.user.email,
                action=AuditEvent.Action.SEARCH,
                detail={"q": f"invoice {n}", "hits": n},
                ip="10.0.0.7",
                created_at=timezone.now(),
                prev_hash="-" * 64,
                hash="-" * 64,
            )
        latencies.append(time.perf_counter() - began)
    return latencies


def run(url: str, tenant_id: int, users: list[int], count: int, chained: bool) -> tuple[float, list[float]]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(len(users)) as pool:
            pending = [pool.apply_async(writer, (url, tenant_id, u, count, chained, start)) for u in users]
            time.sleep(3)  # every process started and connected
            began = time.perf_counter()
            start.set()
            results = [p.get() for p in pending]
            seconds = time.perf_counter() - began
    return seconds, [latency for result in results for latency in result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--events", type=int, default=500, help="per process")
    opts = parser.parse_args()

    import psycopg

    name = f"archiva_bench_audit_{os.getpid()}"
    url = f"{SERVER}/{name}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="archiva.settings")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        setup(url)
        from django.db import connections

        from tenants.actions import create_tenant
        from tenants.audit import verify_tenant
        from tenants.models import Membership, Role, Tenant, User

        tenants, users = {}, []
        for chained in (False, True):  # the baseline's rows in a tenant of their own: they are no chain
            owner = User.objects.create_user(email=f"owner{int(chained)}@contoso.com", password=None)
            tenants[chained] = create_tenant(f"Bench {chained}", owner)
        for n in range(opts.processes):
            user = User.objects.create_user(email=f"reader{n}@contoso.com", password=None)
            for tenant in tenants.values():
                Membership.objects.create(tenant=tenant, user=user, role=Role.AUDITOR)
            users.append(user.pk)
        connections.close_all()
        total = opts.processes * opts.events
        print(f"bench/audit.py: {opts.processes} processes x {opts.events} search events, one tenant, PostgreSQL")
        rows = []
        for label, chained in (("plain INSERT (baseline)", False), ("hash-chained record_event", True)):
            seconds, latencies = run(url, tenants[chained].pk, users, opts.events, chained)
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99)]
            rows.append(total / seconds)
            print(
                f"  {label:<28} {total / seconds:8.0f} events/s   latency median"
                f" {statistics.median(latencies) * 1000:6.2f} ms, p99 {p99 * 1000:6.2f} ms"
            )
        print(f"  ratio chained / plain        {rows[1] / rows[0]:8.2f}")
        verdict = verify_tenant(Tenant.objects.get(pk=tenants[True].pk))
        print(
            f"  chain after the run: {'intact' if verdict.ok else 'BROKEN: ' + verdict.reason}, {verdict.events} events"
        )
        if not verdict.ok:
            sys.exit(1)
        connections.close_all()
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
