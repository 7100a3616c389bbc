"""`manage.py worker_health`: the liveness probe of a real Celery worker on its own Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import free_port, missing, wait_for_port
from tests.test_ingest_process import ROOT, process_env


class Redis:
    """A private redis-server, so the test can take the broker away from the worker."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = Redis(tmp_path)
    try:
        server.start()
    except FileNotFoundError:
        missing("redis-server", "apt-get install redis-server")
    yield server
    server.stop()


@pytest.fixture
def worker(transactional_db, settings, tls_files, tmp_path, redis_server):
    """A real worker (prefork, as in production) beating every 0.3 s into tmp_path/worker.heartbeat."""
    node = f"health-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
    env = process_env(
        settings,
        tls_files,
        CELERY_BROKER_URL=redis_server.url,
        ARCHIVA_WORKER_HEARTBEAT_INTERVAL="0.3",
        ARCHIVA_WORKER_HEARTBEAT_PATH=str(tmp_path / "worker.heartbeat"),
    )
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "archiva", "worker", "-n", node, "--concurrency", "1"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc.node = node  # type: ignore[attr-defined]
    proc.env = env  # type: ignore[attr-defined]
    proc.log = log  # type: ignore[attr-defined]
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "worker_health", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def until_healthy(worker, *args: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 60
    while True:
        done = worker_health(worker.env, *args)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        assert worker.poll() is None, worker.log.read_text()
        time.sleep(0.5)


def test_a_running_worker_is_healthy_and_answers_the_ping_through_the_broker(worker):
    done = until_healthy(worker, "--max-age", "5", "--ping", worker.node)
    assert done.returncode == 0, done.stderr + worker.log.read_text()
    assert f"{worker.node} answered the ping" in done.stdout


def test_a_worker_that_hangs_goes_stale(worker):
    assert until_healthy(worker, "--max-age", "2").returncode == 0
    os.kill(worker.pid, signal.SIGSTOP)  # the main process stops; its heartbeat with it
    time.sleep(3)
    done = worker_health(worker.env, "--max-age", "2")
    assert done.returncode == 1
    assert "is stale" in done.stderr
    done = worker_health(worker.env, "--max-age", "60", "--ping", worker.node, "--timeout", "1")
    assert done.returncode == 1
    assert f"worker {worker.node} did not answer a ping" in done.stderr


def test_a_worker_that_lost_its_broker_goes_stale_and_recovers_when_it_is_back(worker, redis_server):
    assert until_healthy(worker, "--max-age", "2").returncode == 0
    redis_server.stop()
    time.sleep(4)
    done = worker_health(worker.env, "--max-age", "2")
    assert done.returncode == 1, worker.log.read_text()
    assert "is stale" in done.stderr
    assert worker.poll() is None  # alive, reconnecting: only its heartbeat stopped
    redis_server.start()  # the same port: the worker reconnects by itself
    done = until_healthy(worker, "--max-age", "2", "--ping", worker.node)
    assert done.returncode == 0, done.stderr + worker.log.read_text()


def test_no_heartbeat_file_is_a_clear_failure(settings, tmp_path):
    env = dict(os.environ, ARCHIVA_WORKER_HEARTBEAT_PATH=str(tmp_path / "none.heartbeat"))
    done = worker_health(env)
    assert done.returncode == 1
    assert f"no worker heartbeat at {tmp_path / 'none.heartbeat'}: is the worker running?" in done.stderr


def test_a_heartbeat_file_with_garbage_is_a_clear_failure(tmp_path):
    (tmp_path / "worker.heartbeat").write_text("not json")
    env = dict(os.environ, ARCHIVA_WORKER_HEARTBEAT_PATH=str(tmp_path / "worker.heartbeat"))
    done = worker_health(env)
    assert done.returncode == 1
    assert "cannot read the worker heartbeat" in done.stderr
