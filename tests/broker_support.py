"""Brokers of a test's own, which it may stop and start: a redis-server and a
RabbitMQ node on free ports, in the test's temporary folder.

The shared Redis (6379) and RabbitMQ (5672) serve every test run on the
machine; a test that restarts a broker restarts its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.servers import free_port, missing, port_open, wait_for_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RedisServer:
    """redis-server without persistence, like the shared one: a restart loses every queued task."""

    def __init__(self, folder: Path):
        if not shutil.which("redis-server"):
            missing("redis-server", "apt-get install redis-server")
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=20)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def blocked_clients(self) -> int:
        """Clients waiting in a blocking command (a consumer's BRPOP): a task
        published while one waits goes straight to it, not into the queue."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as client:
            return int(client.info("clients")["blocked_clients"])


class RabbitNode:
    """A RabbitMQ node of the test's own (its own node name, ports, Mnesia and
    Erlang cookie): durable queues and persistent messages survive its restart."""

    def __init__(self, folder: Path):
        if not RABBITMQ_SERVER.exists():
            missing("RabbitMQ", "apt-get install rabbitmq-server")
        self.folder = folder
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"archiva-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        folder = str(self.folder)
        env.update(
            HOME=folder,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=f"{folder}/mnesia",
            RABBITMQ_LOG_BASE=f"{folder}/log",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{folder}/enabled_plugins",
            RABBITMQ_PID_FILE=f"{folder}/rabbitmq.pid",
            RABBITMQ_CONFIG_FILE=f"{folder}/rabbitmq",
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{folder}/advanced.config",
            RABBITMQ_CONF_ENV_FILE=f"{folder}/rabbitmq-env.conf",
        )
        return env

    def start(self) -> RabbitNode:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[].\n")  # no management plugin: faster, no more ports
        cookie = self.folder / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"ARCHIVATEST{self.port}")
            cookie.chmod(0o400)
        log = (self.folder / "rabbitmq.out").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBITMQ_SERVER)], env=self._env(), cwd=self.folder, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "rabbitmq.out").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"RabbitMQ node {self.name} did not start:\n{tail}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the node stops cleanly (its queues are kept)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
