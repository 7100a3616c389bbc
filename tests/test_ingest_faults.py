"""Faults of the servers behind the ingest, with real processes: a private
PostgreSQL that we stop and start, an S3-compatible server that goes away
and comes back, and kill -9 during 200 concurrent deliveries."""

from __future__ import annotations

import glob
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ingest import pack
from tests.servers import free_port, missing
from tests.smtp_support import send, stored_objects
from tests.test_ingest_process import IngestProcess

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = b"From: a@contoso.com\r\nSubject: fault\r\n\r\nhello\r\n"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        missing("PostgreSQL server binaries", "apt-get install postgresql")
    return found[-1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port, owned by `postgres`."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="archiva-pg-"))
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(pg_bin("initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_postgres(
            pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
            "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


CREATE_TENANT = """
from tenants.actions import create_tenant, create_user
from tenants.access import current_token
from regions.current import current_region
user = create_user("owner@faults.example", "x")
tenant = create_tenant("Faults Inc", user)
print(f"journal-{current_token(tenant).token}@{current_region().journal_domain}")
"""

COUNT = "from ingest.models import Delivery; print(Delivery.objects.count())"


@pytest.fixture
def stack(tmp_path, tls_files):
    """A data folder and a private PostgreSQL, migrated, with one tenant."""
    if os.geteuid() != 0 and not shutil.which("pg_ctl"):
        missing("PostgreSQL", "run as root or put pg_ctl on PATH")
    pg = PrivatePostgres()
    pg.start()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg.url(),
        ARCHIVA_DATA_DIR=str(tmp_path / "data"),
        ARCHIVA_TLS_CERT=str(tls_files.cert),
        ARCHIVA_TLS_KEY=str(tls_files.key),
        ARCHIVA_TOKEN_CACHE_REFRESH="0.2",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",  # no broker: the sweep's job
        ARCHIVA_BROKER_TIMEOUT="0.2",
    )
    manage(env, "migrate", "-v0")
    address = manage(env, "shell", "-c", CREATE_TENANT).strip().splitlines()[-1]
    processes: list[IngestProcess] = []

    def ingest(**extra) -> IngestProcess:
        process = IngestProcess({**env, **extra}, tmp_path / "smtpd.log").start()
        processes.append(process)
        return process

    yield env, pg, address, ingest
    for process in processes:
        process.stop()
    pg.destroy()


def test_postgresql_down_answers_451_and_recovers(stack, tls_files):
    env, pg, address, ingest = stack
    process = ingest()
    assert send(process, tls_files, [address], MESSAGE)[0] == 250
    pg.stop()
    code, reply = send(process, tls_files, [address], MESSAGE + b"while down\r\n")
    assert code == 451 and reply.startswith(b"4.3.0")
    pg.start()
    deadline = time.monotonic() + 30
    while (code := send(process, tls_files, [address], MESSAGE + b"after\r\n")[0]) != 250:
        assert code == 451 and time.monotonic() < deadline
        time.sleep(0.5)
    # The message refused while PostgreSQL was down was not recorded.
    assert int(manage(env, "shell", "-c", COUNT).strip().splitlines()[-1]) == 2


def test_s3_down_mid_run_answers_451_then_recovers_with_nothing_lost(stack, tls_files, tmp_path):
    from moto.server import ThreadedMotoServer

    env, pg, _, ingest = stack
    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    s3_env = {
        "ARCHIVA_S3_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    env = {**env, **s3_env}
    address = (
        manage(env, "shell", "-c", CREATE_TENANT.replace("owner@faults", "owner2@faults")).strip().splitlines()[-1]
    )
    process = ingest(**s3_env)
    acknowledged, refused = [], 0
    try:
        for i in range(30):
            if i == 10:
                s3.stop()
            if i == 20:
                s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                s3.start()  # a fresh, empty server: buckets must exist again for 250
                manage(env, "shell", "-c", "from tenants.models import Tenant; from infra.storage import get_store\n"
                       "[get_store().create_bucket(t.bucket) for t in Tenant.objects.all()]")  # fmt: skip
            code, reply = send(process, tls_files, [address], MESSAGE + f"n={i}\r\n".encode())
            if code == 250:
                acknowledged.append(i)
            else:
                assert code == 451 and reply.startswith(b"4.3.0")
                refused += 1
        assert refused >= 10 and set(range(10)) <= set(acknowledged) and set(range(20, 30)) <= set(acknowledged)
        check = (
            "from ingest.models import Delivery; from infra.storage import get_store\n"
            "rows = Delivery.objects.filter(tenant__name='Faults Inc')"
            ".select_related('tenant').order_by('id')[10:]\n"
            "print(sum(1 for r in rows if r.read_report()))"
        )
        # The deliveries acknowledged after recovery are readable and verified.
        assert int(manage(env, "shell", "-c", check).strip().splitlines()[-1]) == len(acknowledged) - 10
    finally:
        s3.stop()


def test_kill_9_during_200_concurrent_deliveries_keeps_every_acknowledged_message(stack, tls_files):
    env, pg, address, ingest = stack
    process = ingest()
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    start = threading.Barrier(200)

    def deliver(n: int):
        body = f"Subject: concurrent {n}\r\n\r\n{'y' * 4000}\r\n".encode()
        try:
            start.wait(30)
            code, reply = send(process, tls_files, [address], body)
        except (smtplib.SMTPException, OSError, threading.BrokenBarrierError):
            return
        if code == 250:
            with lock:
                acknowledged[reply.decode().split()[1]] = body

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill9()
    for t in threads:
        t.join(60)
    assert acknowledged, "no delivery was acknowledged before the kill"

    ingest()  # restart on the same data
    ids = ",".join(repr(q) for q in acknowledged)
    check = (
        "from ingest.models import Delivery\n"
        f"rows = Delivery.objects.filter(queue_id__in=[{ids}]).select_related('tenant')\n"
        "print(len(rows), sum(1 for r in rows if r.read_report()))\n"
        "print(' '.join(sorted({r.storage_key for r in rows})))"
    )
    counts, keys = manage(env, "shell", "-c", check).strip().splitlines()[-2:]
    found, verified = map(int, counts.split())
    assert found == verified == len(acknowledged)
    # No partial object is visible: every pack and message holds what its name
    # says, and the objects holding the acknowledged messages are among them.
    data = Path(env["ARCHIVA_DATA_DIR"]) / "buckets"
    objects = {"/".join(path.parts[-3:]): path for path in stored_objects(data)}
    assert objects, "nothing stored"
    assert set(keys.split()) <= set(objects)
    for key, path in objects.items():
        assert pack.matches_key(key, path.read_bytes()), key
