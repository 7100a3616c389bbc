"""Time from SMTP `250` to searchable, on the embedded default, end to end.

    .venv/bin/python bench/latency.py [--messages 200] [--rate 20]

Starts the real processes on a fresh data folder (the SMTP ingest, a Celery
worker and beat, as `make run` does), creates a tenant, then sends journal
reports over SMTP with STARTTLS at a steady rate.  For each message it takes
the moment the final `250` arrived and polls the tenant's search (the same
backend and scope the web app uses) for a word unique to that message.
Prints p50/p95/max of 250→searchable (polled every 50 ms).
Target (issue 3): p95 under 5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _journal_reports import send_reports  # noqa: E402  (bench/_journal_reports.py; bench/ is the script's folder)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start(name: str, args: list[str], env: dict, logs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=(logs / f"{name}.log").open("wb"), stderr=subprocess.STDOUT
    )


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second sent")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up on a message after this long")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    opts = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="archiva-latency-"))
    smtp_port = free_port()
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    env.update(
        ARCHIVA_DATA_DIR=str(data),
        ARCHIVA_SMTP_PORT=str(smtp_port),
        ARCHIVA_METRICS_PORT="0",
        ARCHIVA_TENANT_RATE="0",
        ARCHIVA_LOG_LEVEL="warning",
        DJANGO_SETTINGS_MODULE="archiva.settings",
    )
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    import django

    django.setup()
    from regions.current import current_region
    from search.backends import get_backend
    from search.backends.base import Scope
    from tenants.access import current_token
    from tenants.actions import create_tenant
    from tenants.models import User

    tenant = create_tenant("Latency", User.objects.create_user(email="latency@example.com", password=None))
    address = f"journal-{current_token(tenant).token}@{current_region().journal_domain}"

    procs = [
        start("smtpd", ["manage.py", "smtpd"], env, data),
        start("worker", ["-m", "celery", "-A", "archiva", "worker", "--loglevel=warning", "-c", "2"], env, data),
        start("beat", ["-m", "celery", "-A", "archiva", "beat", "--schedule", str(data / "beat")], env, data),
    ]
    try:
        wait_port(smtp_port)
        time.sleep(3)  # let the worker connect to the broker
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the generated self-signed cert
        acked: dict[str, float] = {}
        lock = threading.Lock()

        def send_all():
            client = smtplib.SMTP("127.0.0.1", smtp_port, timeout=60)
            client.ehlo("bench")
            client.starttls(context=context)
            client.ehlo("bench")
            send_reports(client, address, opts.messages, opts.rate, acked, lock)
            client.quit()

        sender = threading.Thread(target=send_all)
        sender.start()
        backend, scope = get_backend(), Scope(tenant_id=tenant.id, addresses=None)
        searchable: dict[str, float] = {}
        while sender.is_alive() or len(searchable) < len(acked):
            with lock:
                waiting = [m for m in acked if m not in searchable]
            now = time.monotonic()
            for marker in waiting:
                if now - acked[marker] > opts.timeout:
                    searchable[marker] = float("inf")
                    continue
                if backend.search(scope, marker, limit=1).count:
                    searchable[marker] = time.monotonic()
            time.sleep(0.05)
        sender.join()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not opts.keep:
            shutil.rmtree(data, ignore_errors=True)

    latencies = [searchable[m] - acked[m] for m in acked]
    lost = sum(1 for v in latencies if v == float("inf"))
    found = [v for v in latencies if v != float("inf")]
    print(f"bench/latency.py: {len(acked)}/{opts.messages} accepted at {opts.rate:g}/s, embedded default")
    if found:
        print(
            f"  250 -> searchable   p50 {statistics.median(found):.2f} s   p95 {percentile(found, 0.95):.2f} s"
            f"   max {max(found):.2f} s   (target p95 < 5 s)"
        )
    if lost:
        print(f"  NOT searchable within {opts.timeout:g} s: {lost}")
    sys.exit(1 if lost or not found else 0)


if __name__ == "__main__":
    main()
