"""Historical import from Microsoft 365, end to end: Graph → stored → archived → searchable.

    .venv/bin/python bench/m365_import.py [--mailboxes 10] [--messages 300] [--large 2]
    .venv/bin/python bench/m365_import.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

Ten mailboxes in the Microsoft fake (tests/ms_fake.py, in a process of its
own, answering at once), each with messages over six nested folders and a
couple of 2 MB ones.  The import runs in this process exactly as the
worker's `m365.tasks.run_import` runs it (`importer.run_slice`: mailboxes in
parallel, four Graph requests at most per mailbox, batches stored durably),
while a real Celery worker (one process) archives and indexes what it
stores.  The clock stops when every message is indexed; a search for one
message's codeword must then find it.

Baseline, in the same run: the same messages handed to `store_items` for a
second tenant without Graph, archived and indexed by the same worker: what
the archive side costs alone.  The ratio is the import's end-to-end rate to
the baseline's.  Target (issue 18): at least 200 messages/s end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def environment(database_url: str | None) -> tuple[dict[str, str], Path, str | None]:
    data = Path(tempfile.mkdtemp(prefix="archiva-m365-bench-"))
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    env.update(ARCHIVA_DATA_DIR=str(data), DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    scratch = None
    if database_url:
        import psycopg

        scratch = f"archiva_m365_bench_{os.getpid()}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {scratch}")
        env["DATABASE_URL"] = database_url.rsplit("/", 1)[0] + "/" + scratch
    return env, data, scratch


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (Linux: VmHWM), in MB; 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300, help="per mailbox")
    parser.add_argument("--large", type=int, default=2, help="2 MB messages per mailbox (among --messages)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (production's default: 2)")
    parser.add_argument("--database-url", help="a PostgreSQL server to make a scratch database on")
    opts = parser.parse_args()

    env, data, scratch = environment(opts.database_url)
    os.environ.clear()
    os.environ.update(env)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        ok = run(opts, env, data, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(data, ignore_errors=True)
        if scratch and opts.database_url:
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(opts.database_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    sys.exit(0 if ok else 1)


def start_fake(opts: argparse.Namespace, data: Path, connection, certificate, processes) -> dict:
    cert = data / "bench-cert.pem"
    cert.write_text(certificate.certificate_pem)
    info = data / "fake.json"
    fake = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "_ms_fake_server.py"),
            f"--directory={connection.directory_id}",
            f"--client={connection.client_id}",
            f"--cert={cert}",
            f"--mailboxes={opts.mailboxes}",
            f"--messages={opts.messages}",
            f"--large={opts.large}",
            f"--out={info}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    processes.append(fake)
    deadline = time.monotonic() + 300
    while not info.exists():
        if fake.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the Microsoft fake did not start")
        time.sleep(0.2)
    time.sleep(0.2)  # written in one call; let it land
    return json.loads(info.read_text())


def start_worker(env: dict[str, str], data: Path, fake: dict, processes, concurrency: int) -> subprocess.Popen[bytes]:
    worker_env = dict(
        env, ARCHIVA_MS_LOGIN_URL=fake["url"], ARCHIVA_MS_GRAPH_URL=fake["url"], ARCHIVA_MS_CA_BUNDLE=fake["ca_path"]
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "archiva",
            "worker",
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-l",
            "warning",
        ],
        cwd=ROOT,
        env=worker_env,
        stdout=(data / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    processes.append(worker)
    return worker


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """CPU time (user + system) a live process used so far, from /proc (Linux); its child processes too if asked."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    total = own(pid)
    if with_children:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                total += own(int(stat.parent.name))
    return total


def wait_indexed(tenant, expected: int, timeout: float, worker) -> float:
    from archive.models import Message

    deadline = time.monotonic() + timeout
    while True:
        done = Message.objects.filter(tenant=tenant, index_status=Message.IndexStatus.INDEXED).count()
        if done >= expected:
            return time.perf_counter()
        if time.monotonic() > deadline or worker.poll() is not None:
            raise SystemExit(f"only {done} of {expected} messages indexed (worker exit {worker.poll()})")
        time.sleep(0.1)


def run(opts: argparse.Namespace, env: dict[str, str], data: Path, processes) -> bool:
    from django.conf import settings

    from archive.items import Item, store_items
    from m365 import importer
    from m365.certificates import Subject, create_certificate
    from m365.import_actions import start_import
    from m365.importing import ImportRun
    from m365.models import Connection, Mailbox
    from search import get_backend
    from search.backends.base import Scope
    from tenants.actions import create_tenant
    from tenants.models import User

    tenant = create_tenant("Bench", User.objects.create_user(email="bench@example.com", password=None))
    connection = Connection.objects.create(tenant=tenant, directory_id=uuid.uuid4(), client_id=uuid.uuid4())
    certificate = create_certificate(connection, Subject(common_name="Archiva bench", country="US"))
    fake = start_fake(opts, data, connection, certificate, processes)
    settings.ARCHIVA_MS_LOGIN_URL = settings.ARCHIVA_MS_GRAPH_URL = fake["url"]
    settings.ARCHIVA_MS_CA_BUNDLE = fake["ca_path"]
    for user in fake["users"]:
        Mailbox.objects.create(
            tenant=tenant, graph_id=user["id"], user_principal_name=user["upn"], primary_address=user["upn"]
        )
    total = sum(user["messages"] for user in fake["users"])
    worker = start_worker(env, data, fake, processes, opts.concurrency)
    time.sleep(3)  # the worker's start-up, outside the clock

    run_row = start_import(tenant, "all", publish=False)
    cpu_before = (cpu_seconds(os.getpid()), cpu_seconds(processes[0].pid), cpu_seconds(worker.pid, True))
    started = time.perf_counter()
    while importer.run_slice(run_row.pk) is not True:
        pass
    fetched_at = time.perf_counter()
    finished = wait_indexed(tenant, total, 600, worker)
    cpu_after = (cpu_seconds(os.getpid()), cpu_seconds(processes[0].pid), cpu_seconds(worker.pid, True))
    cpu_ms = [1000 * (after - before) / total for before, after in zip(cpu_before, cpu_after, strict=True)]
    run_row.refresh_from_db()
    import_rss = peak_rss_mb(os.getpid())

    backend = get_backend()
    backend.refresh()
    found = backend.search(Scope(tenant.pk, None), f"bench{total - 1}", limit=5).ids

    # Baseline: the same bytes, stored without Graph for a second tenant, through the same worker.
    other = create_tenant("Baseline", User.objects.create_user(email="base@example.com", password=None))
    from archive.access import messages as tenant_messages
    from archive.documents import read_original

    originals = [(m.pk, read_original(m)) for m in tenant_messages(tenant).select_related("tenant")]
    base_started = time.perf_counter()
    for start in range(0, len(originals), settings.ARCHIVA_M365_IMPORT_BATCH):
        chunk = originals[start : start + settings.ARCHIVA_M365_IMPORT_BATCH]
        store_items(other, [Item("mail", "base@contoso.com", "Inbox", f"id{pk}", raw) for pk, raw in chunk])
    base_finished = wait_indexed(other, len(originals), 600, worker)

    out, _ = processes[0].communicate(timeout=30)  # closes its stdin: it reports and stops
    concurrency = json.loads(out.decode().strip().splitlines()[-1])["max_concurrency"]

    seconds = finished - started
    rate = total / seconds
    base_rate = len(originals) / (base_finished - base_started)
    database = "PostgreSQL" if opts.database_url else "embedded default (SQLite)"
    print(f"bench/m365_import.py: {opts.mailboxes} mailboxes x {opts.messages} messages ({opts.large} of 2 MB each)")
    print(
        f"  {database}, import in this process, a Celery worker of {opts.concurrency} processes archiving and indexing"
    )
    print(f"  fetched and stored (Graph → store_items)   {total / (fetched_at - started):8.0f} msgs/s")
    print(f"  end to end (stored, archived, searchable)  {rate:8.0f} msgs/s   (target >= 200)")
    print(f"  baseline: same messages without Graph      {base_rate:8.0f} msgs/s")
    print(f"  ratio import / baseline                    {rate / base_rate:8.2f}")
    print(f"  most Graph requests at once per mailbox    {concurrency:8d}   (Exchange allows 4)")
    print(f"  importer's peak memory                     {import_rss:8.0f} MB")
    print(
        f"  CPU per message: importer {cpu_ms[0]:.1f} ms, Graph fake {cpu_ms[1]:.1f} ms, worker {cpu_ms[2]:.1f} ms"
        f" ({os.cpu_count()} cores: at most {1000 * (os.cpu_count() or 1) / sum(cpu_ms):.0f} msgs/s for all three)"
    )
    ok = run_row.state == ImportRun.State.DONE and run_row.messages_imported == total and len(found) == 1
    if not ok:
        print(f"  WRONG: state {run_row.state}, {run_row.messages_imported} of {total} imported, search found {found}")
    return ok and concurrency <= 4


if __name__ == "__main__":
    main()
