"""`make run`'s supervisor (scripts/supervise.py): a process that dies is
started again, and the others go on; the ingest keeps answering 250 while
the worker is down, and the new worker archives what it accepted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.broker_support import RedisServer
from tests.servers import free_port, wait_for_port
from tests.smtp_support import journal_address
from tests.test_broker_faults import Sender, wait_until_archived
from tests.test_ingest_process import ROOT, process_env

SUPERVISE = ROOT / "scripts" / "supervise.py"


def started_pids(output: str, name: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf" {name}\s+\| started with pid (\d+)", output)]


def wait_for_pids(log, name: str, count: int, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := started_pids(log.read_text(), name)) < count:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    return pids


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_killed_worker_is_started_again_while_the_ingest_answers_250(
    transactional_db, settings, tls_files, tmp_path, org, outsider, redis
):
    port = free_port()
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"smtpd: {sys.executable} manage.py smtpd --port {port}\n"
        f"worker: {sys.executable} -m celery -A archiva worker --pool solo --loglevel info\n"
    )
    log = tmp_path / "supervise.log"
    supervisor = subprocess.Popen(
        [sys.executable, str(SUPERVISE), str(procfile)],
        cwd=ROOT,
        env=process_env(settings, tls_files, CELERY_BROKER_URL=redis.url),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    sender = None
    try:
        wait_for_port(port, timeout=60)
        [smtpd] = wait_for_pids(log, "smtpd", 1)
        [first] = wait_for_pids(log, "worker", 1)
        sender = Sender(port, tls_files, journal_address(org.tenant))
        sender.start()
        sender.wait_for(10)
        os.kill(first, signal.SIGKILL)
        sender.wait_for(len(sender.acknowledged) + 20)  # accepted while the worker is dead or starting again
        second = wait_for_pids(log, "worker", 2)[1]
        assert second != first
        sender.wait_for(len(sender.acknowledged) + 10)
        sender.halt.set()
        sender.join(30)
        assert not sender.refused, sender.refused[:5]
        assert not wait_until_archived(sender.acknowledged, 60), log.read_text()[-4000:]
        assert started_pids(log.read_text(), "smtpd") == [smtpd]  # the ingest never stopped
        assert supervisor.poll() is None
    finally:
        if sender:
            sender.halt.set()
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)
    assert "exited with -9; starting it again in 1 s" in log.read_text()
