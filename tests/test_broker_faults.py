"""Broker restarts under load, on real servers (issue 21, broker faults).

The ingest, a worker (prefork, as `make run` starts it) and beat run as real
processes against a broker of the test's own (tests/broker_support.py),
which the test restarts while mail flows and tasks are in flight: the worker
and beat stay up, the ingest keeps answering 250, and every acknowledged
message is archived and indexed within a minute of the broker's return.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import kombu
import kombu.exceptions
import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from django.utils import timezone

from ingest.delivery import mark_enqueued, mark_retry_due, stranded_deliveries
from ingest.models import Delivery
from ingest.stats import publish_failures
from m365.notifications import PROCESS_TASK as PROCESS_NOTIFICATIONS
from m365.sync import Notification
from tests.archive_support import deliver
from tests.broker_support import RabbitNode, RedisServer
from tests.smtp_support import journal_address
from tests.test_ingest_process import ROOT, IngestProcess, process_env
from tests.test_o365_webhook import subscribe

# After the broker is back, everything acknowledged is archived and indexed within this.
RECOVERY = 60.0


class Stack:
    """The ingest, a worker and beat on one broker URL, with their logs in `folder`."""

    def __init__(self, settings, tls_files, folder: Path, broker_url: str, **extra: str):
        self.env = process_env(settings, tls_files, CELERY_BROKER_URL=broker_url, **extra)
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ingest = IngestProcess(self.env, folder / "smtpd.log")

    def celery(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "-A", "archiva", role, "--loglevel", "info", *args]
        proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=(self.folder / f"{role}.log").open("ab"), stderr=subprocess.STDOUT
        )
        self.procs[role] = proc
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        return self.celery("worker", "--concurrency", "2")

    def beat(self) -> subprocess.Popen[bytes]:
        return self.celery("beat", "--schedule", str(self.folder / "celerybeat-schedule"))

    def log(self, role: str) -> str:
        return (self.folder / f"{role}.log").read_text(errors="replace")

    def stop(self) -> None:
        self.ingest.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def stack(transactional_db, settings, tls_files, tmp_path, org, outsider) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(broker_url: str, **extra: str) -> Stack:
        made.append(Stack(settings, tls_files, tmp_path, broker_url, **extra))
        return made[-1]

    yield make
    for each in made:
        each.stop()


class Sender(threading.Thread):
    """Sends journal reports over one STARTTLS session after another until
    stopped, noting the queue id of every one that got 250."""

    def __init__(self, port: int, tls_files, address: str):
        super().__init__(daemon=True)
        self.port, self.tls_files, self.address = port, tls_files, address
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                    client.ehlo("outbound.protection.outlook.com")
                    client.starttls(context=self.tls_files.client_context())
                    client.ehlo("outbound.protection.outlook.com")
                    for _ in range(20):
                        n += 1
                        body = f"From: a@contoso.com\r\nSubject: fault {n}\r\n\r\nmessage {n}\r\n".encode()
                        client.mail("ndr@contoso.com")
                        client.rcpt(self.address)
                        code, reply = client.data(body)
                        if code == 250:
                            self.acknowledged.append(reply.decode().split()[1])
                        else:
                            self.refused.append(f"{code} {reply!r}")
                        if self.halt.is_set():
                            return
            except smtplib.SMTPException as exc:
                self.refused.append(repr(exc))
                time.sleep(0.1)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"{len(self.acknowledged)} of {count} accepted: {self.refused[-3:]}"
            time.sleep(0.05)


def unfinished(queue_ids: list[str]) -> list[str]:
    """Those of these acknowledged messages not yet archived and indexed."""
    done = set(
        Delivery.objects.filter(
            queue_id__in=queue_ids, status=Delivery.Status.ARCHIVED, message__index_status="indexed"
        ).values_list("queue_id", flat=True)
    )
    return [queue_id for queue_id in queue_ids if queue_id not in done]


def wait_until_archived(queue_ids: list[str], timeout: float) -> list[str]:
    """Wait up to `timeout` seconds for every one to be archived and indexed; those still waiting."""
    deadline = time.monotonic() + timeout
    while (left := unfinished(queue_ids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def wait_for_log(stack: Stack, role: str, text: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while text not in stack.log(role):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def publish_to(broker_url: str, task: str, args: tuple[object, ...] = (), countdown: float | None = None) -> str:
    """Publish `task` to the broker at `broker_url` (not this process's own); its task id."""
    app = Celery("test")
    # The URL goes to the connection: Celery's broker_url prefers CELERY_BROKER_URL from the environment.
    with app.connection_for_write(broker_url) as connection:
        return app.send_task(task, args=args, countdown=countdown, connection=connection).id


def hold_a_task(stack: Stack, broker_url: str) -> None:
    """Have the worker hold a task it has taken and not acknowledged: an
    indexing run due in two minutes (like a retry waiting for its backoff)."""
    task_id = publish_to(broker_url, "archive.tasks.index_pending", countdown=120)
    assert wait_for_log(stack, "worker", f"{task_id}] received"), stack.log("worker")[-3000:]


def restart_under_load(stack: Stack, broker, tls_files, org) -> None:
    """Mail flows and the worker has tasks in flight when the broker goes
    away and when it restarts; the ingest answers 250 throughout, and every
    acknowledged message is archived and indexed within RECOVERY of the
    broker's return, by the same worker and beat.

    First the worker finds its broker gone while it holds a task and waits
    for the next; then it is paused (SIGSTOP) while the broker restarts, so
    that tasks it has taken and tasks waiting in the broker's queue (which a
    Redis without persistence loses) meet the restart whatever the machine's speed."""
    worker, beat = stack.worker(), stack.beat()
    stack.ingest.start()
    sender = Sender(stack.ingest.port, tls_files, journal_address(org.tenant))
    sender.start()
    try:
        sender.wait_for(40)
        assert not wait_until_archived(sender.acknowledged[:20], 60), stack.log("worker")[-3000:]
        hold_a_task(stack, broker.url)
        broker.stop()
        assert wait_for_log(stack, "worker", "Connection to broker lost"), stack.log("worker")[-3000:]
        sender.wait_for(len(sender.acknowledged) + 20)  # the ingest goes on answering 250
        broker.start()
        sender.wait_for(len(sender.acknowledged) + 20)
        worker.send_signal(signal.SIGSTOP)
        try:
            sender.wait_for(len(sender.acknowledged) + 30)  # published into the queue, waiting
            broker.restart()
        finally:
            worker.send_signal(signal.SIGCONT)
        sender.wait_for(len(sender.acknowledged) + 40)
    finally:
        sender.halt.set()
        sender.join(30)
    left = wait_until_archived(sender.acknowledged, RECOVERY)
    assert not left, f"{len(left)} of {len(sender.acknowledged)} not archived:\n{stack.log('worker')[-4000:]}"
    assert worker.poll() is None, stack.log("worker")[-4000:]
    assert beat.poll() is None, stack.log("beat")[-4000:]
    assert not sender.refused, sender.refused[:5]


def test_a_worker_with_tasks_in_flight_survives_a_redis_restart_and_nothing_acknowledged_is_lost(
    stack, tls_files, org, tmp_path
):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        running = stack(redis.url)
        restart_under_load(running, redis, tls_files, org)
        # The restart met tasks the worker had taken and not yet acknowledged.
        assert "unacknowledged message" in running.log("worker")
    finally:
        redis.stop()


def test_a_worker_with_tasks_in_flight_survives_a_rabbitmq_restart_and_nothing_acknowledged_is_lost(
    stack, tls_files, org, tmp_path
):
    rabbit = RabbitNode(tmp_path / "rabbitmq").start()
    try:
        restart_under_load(stack(rabbit.url), rabbit, tls_files, org)
    finally:
        rabbit.stop()


def queued(url: str, queue: str = "celery") -> int:
    """How many messages wait in `queue` of the broker at `url` (no worker consumes them here)."""
    with kombu.Connection(url, connect_timeout=5) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).message_count)


def test_beat_goes_on_publishing_after_a_rabbitmq_restart(stack, tmp_path):
    """Beat's connection dies with the broker; its next due task is published
    on a new one (it used to fail with `Server unexpectedly closed connection`
    for minutes)."""
    rabbit = RabbitNode(tmp_path / "rabbitmq").start()
    try:
        running = stack(rabbit.url, ARCHIVA_SWEEP_INTERVAL="1")
        beat = running.beat()
        deadline = time.monotonic() + 60
        while not _queued_or_zero(rabbit.url):
            assert time.monotonic() < deadline, running.log("beat")[-3000:]
            time.sleep(0.2)
        rabbit.restart()
        before = queued(rabbit.url)  # durable queue, persistent messages: kept across the restart
        deadline = time.monotonic() + RECOVERY
        while queued(rabbit.url) <= before:
            assert time.monotonic() < deadline, running.log("beat")[-3000:]
            time.sleep(0.2)
        assert beat.poll() is None, running.log("beat")[-3000:]
        assert "scheduler -> archiva.beat.Scheduler" in running.log("beat")  # by the settings, with no flag
    finally:
        rabbit.stop()


def _queued_or_zero(url: str) -> int:
    try:
        return queued(url)
    except kombu.exceptions.OperationalError:
        raise
    except Exception:  # the queue is declared by the first publish
        return 0


def test_a_worker_back_on_its_broker_sweeps_what_was_published_before_the_restart(org, settings):
    """Tasks published before a broker restart may be gone with it (a Redis
    without persistence): the reconnect sweep takes their deliveries again at
    once, not ARCHIVA_REQUEUE_AFTER later; those published since are left alone."""
    before = deliver(org.tenant, b"From: a@contoso.com\r\nSubject: before\r\n\r\nx\r\n")
    mark_enqueued([before.pk])
    reconnected = timezone.now() + timedelta(microseconds=1)
    assert before not in stranded_deliveries(grace=0)  # published, inside the requeue window
    assert list(stranded_deliveries(grace=0, published_before=reconnected)) == [before]
    after = deliver(org.tenant, b"From: a@contoso.com\r\nSubject: after\r\n\r\nx\r\n")
    mark_enqueued([after.pk])
    assert list(stranded_deliveries(grace=0, published_before=reconnected)) == [before]


def test_a_worker_back_on_its_redis_processes_the_graph_notifications_its_restart_lost(stack, org, tmp_path):
    """A Graph notification's task waits in Redis while the worker is paused;
    the broker's restart loses it (no persistence).  Once the worker is back
    on its broker, its reconnect sweep publishes the notification again at
    once, not ARCHIVA_REQUEUE_AFTER (an hour here) later, and a worker
    processes it: its one attempt finds no Microsoft 365 connection, which
    is recorded as its outcome."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        running = stack(redis.url, ARCHIVA_REQUEUE_AFTER="3600")
        worker = running.worker()
        started = re.compile(r"m365\.tasks\.sweep_notifications\[[^\]]+\] succeeded")
        deadline = time.monotonic() + 60
        while not started.search(running.log("worker")):  # the start-up sweep is done: ours is the reconnect's
            assert time.monotonic() < deadline, running.log("worker")[-3000:]
            time.sleep(0.1)
        subscription, _ = subscribe(org.tenant)
        worker.send_signal(signal.SIGSTOP)
        try:
            # The paused worker's last BRPOP ends (brpop_timeout, 1 s): the task then stays queued.
            deadline = time.monotonic() + 30
            while redis.blocked_clients():
                assert time.monotonic() < deadline, "the paused worker still waits in BRPOP"
                time.sleep(0.1)
            lost = Notification.objects.create(
                tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={},
                enqueued_at=timezone.now(),
            )  # fmt: skip
            publish_to(redis.url, PROCESS_NOTIFICATIONS, ([lost.pk],))
            assert queued(redis.url) == 1
            redis.restart()
            assert _queued_or_zero(redis.url) == 0  # lost with the restart
        finally:
            worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + RECOVERY
        while not Notification.objects.filter(pk=lost.pk, processed_at__isnull=False).exists():
            assert time.monotonic() < deadline, running.log("worker")[-4000:]
            time.sleep(0.5)
        lost.refresh_from_db()
        assert lost.attempts == 1
        assert lost.error.startswith("NoConnection: ")
        assert "broker connection back" in running.log("worker")
    finally:
        redis.stop()


def daily_scrub_app() -> Celery:
    """An app of its own for beat, whose one entry, the daily scrub, is due
    (its broker: CELERY_BROKER_URL from the environment, which Celery prefers)."""
    app = Celery("beat-test", set_as_current=False)
    app.conf.update(
        result_expires=None,  # no backend_cleanup entry of Celery's own
        broker_connection_timeout=1,
        task_publish_retry=False,
        beat_schedule={
            "daily scrub": {
                "task": "compliance.tasks.scrub_storage",
                "schedule": 24 * 3600.0,
                "last_run_at": app.now() - timedelta(days=1, minutes=1),
            }
        },
    )
    return app


def test_beat_counts_a_daily_task_the_broker_refused_and_sends_it_again_once_it_is_back(
    db, settings, monkeypatch, tmp_path, caplog
):
    """Celery's scheduler advances an entry before publishing it, so a daily
    task refused by a broker that was down at that second waited a day,
    uncounted.  Ours counts it on /metrics and sends it again every
    ARCHIVA_SWEEP_INTERVAL until the broker takes it."""
    from archiva.beat import Scheduler

    redis = RedisServer(tmp_path / "redis").start()
    try:
        # Celery's broker_url prefers CELERY_BROKER_URL from the environment.
        monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
        settings.ARCHIVA_SWEEP_INTERVAL = 0.5
        scheduler = Scheduler(app=daily_scrub_app(), schedule_filename=str(tmp_path / "celerybeat-schedule"))
        try:
            _ = scheduler.producer  # connected while the broker is up, as a running beat is
            redis.stop()
            scheduler.tick()
            assert publish_failures() == {"compliance.tasks.scrub_storage": 1}
            assert "daily scrub" in scheduler.failed
            wait = scheduler.tick()  # the broker is still down: no retry before ARCHIVA_SWEEP_INTERVAL...
            assert publish_failures() == {"compliance.tasks.scrub_storage": 1}
            assert wait <= 0.5  # ...but beat wakes for it, not in a day
            time.sleep(0.6)
            scheduler.tick()  # ...then one, refused again
            assert publish_failures() == {"compliance.tasks.scrub_storage": 2}
            refused = [r for r in caplog.records if r.name == "archiva.beat" and "could not publish" in r.getMessage()]
            assert [bool(r.exc_info) for r in refused] == [True, False]  # one traceback, not one a minute
            assert "again" in refused[1].getMessage()

            redis.start()
            time.sleep(0.6)
            scheduler.tick()
            assert not scheduler.failed
            assert queued(redis.url) == 1
            assert publish_failures() == {"compliance.tasks.scrub_storage": 2}
            scheduler.tick()  # sent once: not again until tomorrow
            assert queued(redis.url) == 1
        finally:
            scheduler.close()  # its schedule file, while Celery's modules are there to pickle it
    finally:
        redis.stop()


def test_a_beat_restarted_while_the_broker_is_down_still_sends_what_it_owed(db, settings, monkeypatch, tmp_path):
    """Celery has advanced and saved the refused entry: a new beat would wait a
    day for it.  Ours saves what it owes in the database, and the next beat,
    in a new pod without the first one's schedule file, sends it at its
    first tick."""
    from archiva.beat import Scheduler

    redis = RedisServer(tmp_path / "redis").start()
    schedule = str(tmp_path / "celerybeat-schedule")
    try:
        monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
        settings.ARCHIVA_SWEEP_INTERVAL = 60
        first = Scheduler(app=daily_scrub_app(), schedule_filename=schedule)
        try:
            _ = first.producer
            redis.stop()
            first.tick()
            assert "daily scrub" in first.failed
        finally:
            first.close()  # beat stops while the broker is down

        redis.start()
        second = Scheduler(app=daily_scrub_app(), schedule_filename=str(tmp_path / "new-pod-schedule"))
        try:
            second.tick()
            assert queued(redis.url) == 1 and not second.failed
            second.tick()
        finally:
            second.close()
        third = Scheduler(app=daily_scrub_app(), schedule_filename=schedule)
        try:
            third.tick()  # paid: nothing owed any more
        finally:
            third.close()
        assert queued(redis.url) == 1
        assert publish_failures() == {"compliance.tasks.scrub_storage": 1}
    finally:
        redis.stop()


def test_a_new_beat_without_the_last_ones_schedule_file_keeps_the_daily_clock(db, monkeypatch, tmp_path):
    """The chart's beat has no volume and every upgrade recreates its pod: with
    the last sends in a schedule file, each new beat started the daily clock
    again (with a deploy a day, the daily tasks never ran).  The last send
    is in the database: a new beat neither sends the daily task again nor
    waits a day from its own start."""
    from archiva.beat import Scheduler

    redis = RedisServer(tmp_path / "redis").start()
    try:
        monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
        sent = beat_once(Scheduler, tmp_path / "first-pod-schedule")
        assert queued(redis.url) == 1

        entry = beat_once(Scheduler, tmp_path / "second-pod-schedule")
        assert queued(redis.url) == 1
        assert entry.last_run_at == sent.last_run_at and entry.total_run_count == 1
        due_in = entry.schedule.remaining_estimate(entry.last_run_at).total_seconds()
        assert 23 * 3600 < due_in <= 24 * 3600  # a day after the first beat sent it
    finally:
        redis.stop()


def test_beat_takes_the_last_runs_from_the_schedule_file_an_earlier_version_kept(db, monkeypatch, tmp_path):
    """Upgrading from Celery's file-backed scheduler does not send the daily
    tasks again, nor restart their clock: the entries the database does not
    have yet come from the file."""
    from celery.beat import PersistentScheduler

    from archiva.beat import Scheduler

    redis = RedisServer(tmp_path / "redis").start()
    try:
        monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
        sent = beat_once(PersistentScheduler, tmp_path / "celerybeat-schedule")
        assert queued(redis.url) == 1
        assert beat_once(Scheduler, tmp_path / "celerybeat-schedule").last_run_at == sent.last_run_at
        assert beat_once(Scheduler, tmp_path / "gone").last_run_at == sent.last_run_at  # saved: no file needed
        assert queued(redis.url) == 1
    finally:
        redis.stop()


def beat_once(scheduler_cls: type, schedule_filename: Path) -> ScheduleEntry:
    """A beat that starts, ticks once and stops: its daily scrub entry as it left it."""
    scheduler = scheduler_cls(app=daily_scrub_app(), schedule_filename=str(schedule_filename))
    try:
        scheduler.tick()
        return scheduler.schedule["daily scrub"]
    finally:
        scheduler.close()


def test_the_daily_scrub_counts_a_tenant_task_it_could_not_publish_and_goes_on(
    transactional_db, settings, tls_files, org, outsider, tmp_path
):
    """The daily scrub publishes one task per tenant; with the broker down each
    refused one is counted and the run goes on (the next run catches the
    missed slice up); with it back, every tenant's task is queued."""
    redis = RedisServer(tmp_path / "redis")  # not started yet: nothing listens on its port

    def scrub_storage_in_a_process() -> str:
        env = process_env(settings, tls_files, CELERY_BROKER_URL=redis.url, ARCHIVA_PUBLISH_RETRIES="0")
        command = "from compliance.tasks import scrub_storage; print('published', scrub_storage())"
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", command], cwd=ROOT, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return done.stdout.decode().strip().splitlines()[-1]

    assert scrub_storage_in_a_process() == "published 0"
    assert publish_failures() == {"compliance.tasks.scrub_tenant_storage": 2}
    redis.start()
    try:
        assert scrub_storage_in_a_process() == "published 2"
        assert queued(redis.url) == 2
        assert publish_failures() == {"compliance.tasks.scrub_tenant_storage": 2}
    finally:
        redis.stop()


def test_a_worker_back_on_its_broker_publishes_again_the_retries_still_due(
    transactional_db, settings, tls_files, org, tmp_path
):
    """A delivery whose task is waiting out a retry's countdown (in the broker,
    or held by a worker) loses that task in a broker restart.  The reconnect
    sweep publishes it again with what is left of its countdown, instead of
    leaving it until the retry is ARCHIVA_REQUEUE_AFTER overdue; one never
    published and one archived are not resent."""
    retrying = deliver(org.tenant, b"From: a@contoso.com\r\nSubject: retrying\r\n\r\nx\r\n")
    mark_retry_due([retrying.pk], 120)
    archived = deliver(org.tenant, b"From: a@contoso.com\r\nSubject: archived\r\n\r\nx\r\n")
    mark_retry_due([archived.pk], 120)
    Delivery.objects.filter(pk=archived.pk).update(status=Delivery.Status.ARCHIVED)
    fresh = deliver(org.tenant, b"From: a@contoso.com\r\nSubject: fresh\r\n\r\nx\r\n")  # the grace-free sweep's
    redis = RedisServer(tmp_path / "redis").start()
    try:
        env = process_env(settings, tls_files, CELERY_BROKER_URL=redis.url)
        command = (
            "from django.utils import timezone; from ingest.delivery import sweep_at_start; "
            "print('published', sweep_at_start('worker', published_before=timezone.now()))"
        )
        sent = time.time()
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", command], cwd=ROOT, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert done.stdout.decode().split()[-2:] == ["published", "2"]  # the fresh one, and the retry
        tasks = {}
        with kombu.Connection(redis.url, connect_timeout=5) as connection:
            queue = connection.SimpleQueue("celery")
            for _ in range(queued(redis.url)):
                message = queue.get(timeout=5)
                tasks[tuple(message.payload[0][0])] = message.headers["eta"]
                message.ack()
            queue.close()
        assert set(tasks) == {(retrying.pk,), (fresh.pk,)}
        eta = datetime.fromisoformat(tasks[(retrying.pk,)]).timestamp()
        assert sent + 100 < eta <= time.time() + 121  # what was left of its 120 s
        assert tasks[(fresh.pk,)] is None
    finally:
        redis.stop()
