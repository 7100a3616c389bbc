"""The ingest as a real process: crash safety, graceful stop, broker outage,
the sweep and a real Celery worker, and S3 as the store."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from archive.tasks import process_deliveries
from infra.storage import get_store
from ingest import pack
from ingest.delivery import stranded_deliveries, sweep
from ingest.models import Delivery
from tests.servers import free_port, wait_for_port
from tests.smtp_support import connect, journal_address, send, start_ingest, stored_objects

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = b"From: a@contoso.com\r\nTo: b@fabrikam.com\r\nSubject: crash\r\n\r\nhello\r\n"


def process_env(settings, tls_files, **extra) -> dict[str, str]:
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        ARCHIVA_DATA_DIR=str(settings.DATA_DIR),
        ARCHIVA_TLS_CERT=str(tls_files.cert),
        ARCHIVA_TLS_KEY=str(tls_files.key),
        ARCHIVA_TOKEN_CACHE_REFRESH="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_worker(settings, tls_files, broker_url: str, log: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker (solo pool) on this test's database and data folder, its output in `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "archiva", "worker", "--pool", "solo", "--loglevel", "info"],
        cwd=ROOT,
        env=process_env(settings, tls_files, CELERY_BROKER_URL=broker_url),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


class IngestProcess:
    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> IngestProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "smtpd", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=30)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def ingest_process(transactional_db, settings, tls_files, tmp_path, org, outsider):
    started: list[IngestProcess] = []

    def make(**extra) -> IngestProcess:
        process = IngestProcess(process_env(settings, tls_files, **extra), tmp_path / "smtpd.log")
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.stop()


def kill_9_while_sending(process: IngestProcess, tls_files, address: str, *, wanted: int, filler: int) -> dict:
    """Eight senders until `wanted` messages got 250, then kill -9 while the
    others are mid-session; the acknowledged messages by queue id."""
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()

    def sender(n: int):
        while not stop.is_set():
            body = f"Subject: crash {n} {time.monotonic_ns()}\r\n\r\n{'x' * filler}\r\n".encode()
            try:
                code, reply = send(process, tls_files, [address], body)
            except (smtplib.SMTPException, OSError):
                return
            if code == 250:
                acknowledged[reply.decode().split()[1]] = body
                if len(acknowledged) >= wanted:
                    stop.set()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    stop.wait(60)
    process.kill9()
    for t in threads:
        t.join(30)
    assert len(acknowledged) >= wanted
    return acknowledged


def test_kill_9_right_after_250_loses_nothing(ingest_process, tls_files, org, settings, tmp_path):
    """Every message that got 250 is in storage and the database after a crash."""
    process = ingest_process()
    acknowledged = kill_9_while_sending(process, tls_files, journal_address(org.tenant), wanted=40, filler=2000)

    ingest_process()  # the restarted ingest comes up on the same data
    rows = {row.queue_id: row for row in Delivery.objects.select_related("tenant").filter(tenant=org.tenant)}
    for queue_id, body in acknowledged.items():
        row = rows[queue_id]
        assert row.read_report() == body
    # No partial object is visible: every pack and message holds what its name says.
    bucket_dir = settings.DATA_DIR / "buckets" / org.tenant.bucket
    objects = {str(path.relative_to(bucket_dir)): path for path in stored_objects(bucket_dir)}
    assert {rows[queue_id].storage_key for queue_id in acknowledged} <= set(objects)
    for key, path in objects.items():
        assert pack.matches_key(key, path.read_bytes()), key


def test_sigterm_lets_a_session_in_flight_finish(ingest_process, tls_files, org):
    process = ingest_process()
    with connect(process, tls_files) as client:
        client.mail("ndr@contoso.com")
        client.rcpt(journal_address(org.tenant))
        client.docmd("DATA")
        client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        process.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New sessions are refused while the one in flight goes on.
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", process.port, timeout=3)
        client.send(b"second half\r\n.\r\n")
        code, _ = client.getreply()
        assert code == 250
    assert process.proc.wait(30) == 0
    assert Delivery.objects.filter(tenant=org.tenant).count() == 1


def test_broker_down_still_250_and_the_sweep_enqueues_it_later(ingest_process, tls_files, org, settings, redis_broker):
    process = ingest_process(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, reply = send(process, tls_files, [journal_address(org.tenant)], MESSAGE)
    assert code == 250
    row = Delivery.objects.get(queue_id=reply.decode().split()[1])
    # Publishing happens after the reply; the failed attempt marks the row.
    deadline = time.monotonic() + 20
    while row.enqueued_at is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        row.refresh_from_db()
    assert row.enqueued_at is None and row.status == Delivery.Status.STORED

    settings.ARCHIVA_SWEEP_GRACE = 0
    assert list(stranded_deliveries()) == [row]
    assert sweep() == 1  # published to the real broker (Redis)
    assert not stranded_deliveries().exists()
    row.refresh_from_db()
    assert row.enqueued_at is not None


def test_a_real_worker_verifies_archives_and_indexes_what_the_ingest_stored(
    transactional_db, tls_files, org, settings, redis_broker, tmp_path
):
    server = start_ingest(tls_files)
    worker = start_worker(settings, tls_files, redis_broker, tmp_path / "worker.log")
    try:
        code, reply = send(server, tls_files, [journal_address(org.tenant)], MESSAGE)
        assert code == 250
        row = Delivery.objects.get(queue_id=reply.decode().split()[1])
        deadline = time.monotonic() + 60
        while (
            row.status in (Delivery.Status.STORED, Delivery.Status.RECEIVED)
            or (row.message and row.message.index_status != "indexed")
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
            row = Delivery.objects.select_related("message").get(pk=row.pk)
        assert row.status == Delivery.Status.ARCHIVED, (tmp_path / "worker.log").read_text()[-3000:]
        assert row.verified_at is not None
        assert row.message.subject == "crash" and row.message.index_status == "indexed"
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop_thread()


def test_the_worker_flags_a_stored_object_that_does_not_match_its_hash(org):
    from tests.archive_support import damage, deliver

    row = deliver(org.tenant, MESSAGE)
    damage(row)  # same length, other bytes
    assert process_deliveries.apply(args=([row.pk],)).get() == 0
    row.refresh_from_db()
    assert row.status == Delivery.Status.FAILED and "do not match" in row.error
    # Running it again changes nothing.
    assert process_deliveries.apply(args=([row.pk],)).get() == 0
    row.refresh_from_db()
    assert row.status == Delivery.Status.FAILED


@pytest.mark.s3
def test_ingest_stores_into_s3_and_answers_451_while_s3_is_down(transactional_db, tls_files, use_s3, settings):
    from moto.server import ThreadedMotoServer

    from tenants.actions import create_tenant
    from tests.conftest import make_user

    # A private S3 server for this test, so that stopping it harms no other test.
    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    settings.ARCHIVA_S3_ENDPOINT = f"http://127.0.0.1:{port}"
    get_store.cache_clear()
    tenant = create_tenant("S3 Org", make_user("owner@s3org.example"))
    server = start_ingest(tls_files)
    try:
        code, reply = send(server, tls_files, [journal_address(tenant)], MESSAGE)
        assert code == 250
        row = Delivery.objects.get(queue_id=reply.decode().split()[1])
        assert row.read_report() == MESSAGE

        s3.stop()
        code, reply = send(server, tls_files, [journal_address(tenant)], MESSAGE + b"again\r\n")
        assert code == 451 and reply.startswith(b"4.3.0")
        assert Delivery.objects.count() == 1
    finally:
        server.stop_thread()
        s3.stop()


def test_stale_spool_files_of_a_crashed_ingest_are_removed_and_fresh_ones_kept(tmp_path):
    from ingest.server import clean_spool

    stale, fresh, other = tmp_path / "in-old.eml", tmp_path / "in-new.eml", tmp_path / "keep.txt"
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert clean_spool(tmp_path) == 1
    assert not stale.exists() and fresh.exists() and other.exists()


def children_of(pid: int, marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and marker in command:
            found.append(int(entry.name))
    return found


def committer_of(pid: int) -> int:
    found = children_of(pid, b"ingest.committer_process")
    assert found, f"ingest process {pid} has no committer"
    return found[0]


def niceness(pid: int) -> set[int]:
    """The niceness of each of the process's threads (/proc/PID/task/TID/stat, field 19)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        values.add(int(stat[stat.rindex(")") + 2 :].split()[16]))
    return values


def send_until_accepted(process, tls_files, address: str, accepted: int) -> list[int]:
    """Send distinct messages until `accepted` get 250; each other answer must be 451 4.3.0."""
    time.sleep(0.2)
    codes, deadline = [], time.monotonic() + 30
    while codes.count(250) < accepted:
        assert time.monotonic() < deadline, codes
        code, reply = send(process, tls_files, [address], MESSAGE + f"attempt {len(codes)}\r\n".encode())
        assert code == 250 or (code == 451 and reply.startswith(b"4.3.0")), (code, reply)
        codes.append(code)
        time.sleep(0.1)
    return codes


def test_a_dead_committer_means_451_until_a_new_one_takes_over(ingest_process, tls_files, org):
    process = ingest_process()
    address = journal_address(org.tenant)
    assert send(process, tls_files, [address], MESSAGE)[0] == 250
    first = committer_of(process.proc.pid)
    # The committer yields the CPU to the sessions: ARCHIVA_COMMITTER_NICE (5) more than the
    # ingest, every thread of it (its publisher and checkpointer run too by now).
    [ingest_nice] = niceness(process.proc.pid)
    assert niceness(first) == {ingest_nice + 5}
    assert len(list(Path(f"/proc/{first}/task").iterdir())) >= 2
    os.kill(first, signal.SIGKILL)
    codes = send_until_accepted(process, tls_files, address, 1)
    assert codes[0] == 451  # nothing is acknowledged while no committer runs
    restarted = committer_of(process.proc.pid)
    assert restarted != first
    assert niceness(restarted) == {ingest_nice + 5}
    # Exactly the two acknowledged messages were recorded, both readable.
    rows = list(Delivery.objects.select_related("tenant").filter(tenant=org.tenant))
    assert len(rows) == 2
    for row in rows:
        row.read_report()


def test_ingest_processes_share_one_committer_which_is_restarted_when_it_dies(ingest_process, tls_files, org):
    process = ingest_process(ARCHIVA_SMTP_PROCESSES="2", ARCHIVA_COMMITTER_NICE="0")
    parent = process.proc.pid
    ingests = children_of(parent, b"smtpd")
    [committer] = children_of(parent, b"ingest.committer_process")
    assert len(ingests) == 2
    assert all(not children_of(pid, b"ingest.committer_process") for pid in ingests)
    assert niceness(committer) == niceness(parent)  # 0: the ingest's own priority
    address = journal_address(org.tenant)
    for n in range(20):  # new connections: the kernel spreads them over both processes
        assert send(process, tls_files, [address], MESSAGE + f"first {n}\r\n".encode())[0] == 250

    os.kill(committer, signal.SIGKILL)
    codes = send_until_accepted(process, tls_files, address, 4)
    assert codes[0] == 451  # nothing is acknowledged while no committer runs
    [restarted] = children_of(parent, b"ingest.committer_process")
    assert restarted != committer
    rows = list(Delivery.objects.select_related("tenant").filter(tenant=org.tenant))
    assert len(rows) == 20 + 4
    for row in rows:
        row.read_report()

    # Accepted just before SIGTERM: its line is still in the process's buffer (written every 0.5 s).
    last = send(process, tls_files, [address], MESSAGE + b"last\r\n")
    assert last[0] == 250
    process.proc.terminate()  # SIGTERM: the ingest processes finish, then the committer
    assert process.proc.wait(30) == 0
    assert not Path(f"/proc/{restarted}").exists() or b"zombie" in Path(f"/proc/{restarted}/status").read_bytes()
    # Each forked ingest process wrote its buffered INFO lines before it ended: one per acknowledged message.
    logged = process.log.read_text()
    assert all(f"accepted {row.queue_id} " in logged for row in rows)
    assert f"accepted {last[1].decode().split()[1]} " in logged


def alive(pid: int) -> bool:
    """Running: not gone, not a zombie waiting to be reaped."""
    try:
        return b"\nState:\tZ" not in Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return False


def test_one_ingest_process_runs_like_n_a_supervisor_an_ingest_and_the_committer(ingest_process, tls_files, org):
    """`manage.py smtpd` has one way to run: the command supervises, the
    ingest processes (one by default) and the committer are its children,
    and kill -9 of the command leaves neither behind (the port is free again)."""
    process = ingest_process()
    parent = process.proc.pid
    [ingest] = children_of(parent, b"smtpd")
    committer = committer_of(parent)
    assert not children_of(ingest, b"ingest.committer_process")
    assert send(process, tls_files, [journal_address(org.tenant)], MESSAGE)[0] == 250

    process.kill9()
    deadline = time.monotonic() + 30
    while (alive(ingest) or alive(committer)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(ingest) and not alive(committer)
    with socket.socket() as probe:  # nobody listens on the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", process.port))


def test_a_port_another_program_listens_on_is_a_clear_error(transactional_db, settings, tls_files, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "manage.py", "smtpd", "--port", str(port)],
            cwd=ROOT,
            env=process_env(settings, tls_files),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}:" in done.stderr
    assert "Address already in use" in done.stderr


EMBEDDED_SETUP = """
from regions.current import current_region
from tenants.access import current_token
from tenants.actions import create_tenant, create_user
tenant = create_tenant("Embedded Inc", create_user("owner@embedded.example", None))
print("ADDRESS", f"journal-{current_token(tenant).token}@{current_region().journal_domain}")
"""

EMBEDDED_CHECK = """
import json
from ingest.models import Delivery
rows = {row.queue_id: row.read_report().decode() for row in Delivery.objects.select_related("tenant")}
print("ROWS", json.dumps(rows))
"""


def embedded_env(tls_files, tmp_path) -> dict[str, str]:
    """The environment of `make run`: SQLite, the folder store and the filesystem broker under tmp_path/data."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "CELERY_BROKER_URL") and not name.startswith("ARCHIVA_")
    }
    env.update(
        ARCHIVA_DATA_DIR=str(tmp_path / "data"),
        ARCHIVA_TLS_CERT=str(tls_files.cert),
        ARCHIVA_TLS_KEY=str(tls_files.key),
        ARCHIVA_TOKEN_CACHE_REFRESH="0.2",
        ARCHIVA_SENDER_ALLOWLIST="0",
        ARCHIVA_REGION="us",
        PYTHONUNBUFFERED="1",
    )
    return env


def embedded_manage(env: dict[str, str]):
    """`manage.py ARGS` in env; its standard output (a failure fails the test with both outputs)."""

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return manage


def test_the_embedded_default_keeps_every_acknowledged_message_across_kill_9(tls_files, tmp_path):
    """SQLite, the folder store and the filesystem broker, as `make run` has them:
    the committer's own BEGIN/COMMIT on SQLite and its flush overlapping the
    next batch.  Concurrent senders, kill -9 while they send, a restart: every
    message answered 250 has its row and its exact bytes."""
    env = embedded_env(tls_files, tmp_path)
    manage = embedded_manage(env)
    manage("migrate", "--noinput")
    [address] = [
        line.split()[1] for line in manage("shell", "-c", EMBEDDED_SETUP).splitlines() if line.startswith("ADDRESS")
    ]
    process = IngestProcess(env, tmp_path / "smtpd.log").start()
    try:
        acknowledged = kill_9_while_sending(process, tls_files, address, wanted=60, filler=5000)
        IngestProcess(env, tmp_path / "smtpd.log").start().stop()  # a restart on the same data, then SIGTERM
    finally:
        process.stop()
    [rows] = [
        json.loads(line[5:]) for line in manage("shell", "-c", EMBEDDED_CHECK).splitlines() if line.startswith("ROWS ")
    ]
    for queue_id, body in acknowledged.items():
        assert rows[queue_id] == body.decode()


WAL_UNDER_STEADY_COMMITS = """
import hashlib, os, struct
from pathlib import Path
from django.db import connection
from ingest import record
from ingest.directory import Route
from ingest.record import Envelope, GroupCommitter, Job
from tenants.models import Tenant
record.CHECKPOINT_INTERVAL = 0.02
tenant = Tenant.objects.get()
route = Route(tenant.pk, tenant.bucket, tenant.region, None)
wal = Path(f"{connection.settings_dict['NAME']}-wal")
def starts():  # the WAL header's checkpoint sequence number: one more each time the WAL starts over
    return struct.unpack(">I", wal.read_bytes()[12:16])[0]
committer = GroupCommitter()
first, largest = None, 0
for n in range(300):  # back to back: a commit always lands while the checkpoint thread's checkpoint runs
    batch = []
    for k in range(8):
        envelope = Envelope("ndr@contoso.com", "127.0.0.1", "mail.example", "", "")
        envelope.add_recipient(route, "journal-x@archive.test")
        body = f"Subject: {n}.{k}\\r\\n\\r\\n".encode() + os.urandom(2000).hex().encode()
        batch.append(Job(k, envelope, body, hashlib.sha256(body).hexdigest(), len(body)))
    assert all(error is None for _, error in committer.commit(batch))
    first = starts() if first is None else first
    largest = max(largest, wal.stat().st_size)
print("WAL", starts() - first, largest)
committer.close()
"""


def test_the_sqlite_wal_starts_over_under_steady_commits(tls_files, tmp_path):
    """The committer's checkpoints keep SQLite's WAL from growing without end.

    300 batches of 8 messages committed back to back wrote ~10-17 MB of WAL,
    which without the committer's catch-up checkpoint stayed one growing file
    (it started over 1 to 4 times); with it the WAL starts over after most of
    the thread's checkpoints and stays under a megabyte."""
    env = embedded_env(tls_files, tmp_path)
    manage = embedded_manage(env)
    manage("migrate", "--noinput")
    manage("shell", "-c", EMBEDDED_SETUP)
    [line] = [line for line in manage("shell", "-c", WAL_UNDER_STEADY_COMMITS).splitlines() if line.startswith("WAL ")]
    restarts, largest = map(int, line.split()[1:])
    assert restarts >= 10, line
    assert largest < 4 << 20, line
