"""SMTP ingest benchmark (issue 4, "Speed"): Archiva against smtp-sink and Postfix.

    .venv/bin/python bench/smtp.py                 # 2,000 × 20 KB over 20 sessions, then 100 × 5 MB over 10
    .venv/bin/python bench/smtp.py --quick         # smoke run: 200 × 20 KB, 10 × 5 MB
    .venv/bin/python bench/smtp.py --soak 100000   # also: memory of the ingest over 100,000 messages
    .venv/bin/python bench/smtp.py --help

Needs Debian's postfix package (`apt-get install -y postfix swaks`) for
smtp-source, smtp-sink and postfix; run as root (smtp-sink drops to nobody,
the private Postfix instance needs root to start).

With the same load, one run measures:

1. smtp-sink (a discarding server: the protocol's upper bound on this
   machine) driven by smtp-source, and by bench/_smtp_load.py (how fast the
   Python load client itself can go, without TLS);
2. Archiva's ingest (`manage.py smtpd`, embedded default: SQLite, folder
   store, filesystem broker) with TLS off, driven by smtp-source, for each
   --processes value; every accepted message must be archived (Delivery
   rows == messages accepted, each row's object present in the bucket);
3. the same ingest with STARTTLS required, driven by bench/_smtp_load.py
   (STARTTLS once per session, many messages per connection, pipelined):
   msgs/s and per-message latency from end of DATA to the final 250;
4. a private Postfix instance (smtpd with STARTTLS, queueing to disk on
   hold, nothing delivered) driven by the same client;
5. each server's memory (VmRSS of the process and its children) before,
   during and after each run, and its CPU time per message; with --soak N,
   the ingest's memory over N more messages.

Every server listens on 127.0.0.1 only, on a free port, with its files in
one temporary folder; everything is stopped and removed at the end, on
errors, on Ctrl-C and on SIGTERM.  The machine may be shared, so absolute numbers are
noisy: the ratios, measured in the same run, are what to compare.
Per-tenant and per-peer rate limits are turned off for the ingest (one
benchmark tenant stands for many customers): this measures capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOAD_CLIENT = ROOT / "bench" / "_smtp_load.py"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
APT_HINT = "apt-get install -y postfix swaks"
SENDER = "ndr@contoso.com"
HOST = "127.0.0.1"

TARGET_SINK_RATIO = 0.5  # Archiva (no TLS) / smtp-sink, same load
TARGET_P99_MS = 250.0  # end of DATA -> final 250, with STARTTLS
SOAK_CHUNKS = 10
MARK = "BENCH-JSON "  # prefix of the JSON line printed by Django snippets

# Environment variables that would point the ingest away from the embedded
# default (or at a developer's own data); the benchmark sets its own.
SCALE_VARS = {
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "SITE_ROOT",
    "ALLOWED_HOSTS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
}


# --- shapes and results ---------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    name: str
    messages: int
    size: int
    sessions: int
    primary: bool  # the shape the issue's targets are stated for

    @property
    def title(self) -> str:
        return f"{self.messages:,} messages × {human_bytes(self.size)} over {self.sessions} sessions"

    @property
    def timeout(self) -> float:
        """Seconds a single load run may take before it counts as failed."""
        return 60 + self.messages * 0.05 + self.messages * self.size / 2e6


@dataclass
class Outcome:
    """What a load generator reports."""

    accepted: int
    elapsed: float
    latency_ms: dict | None = None
    replies: dict | None = None
    error: str | None = None
    exact: bool = True  # False: `accepted` is only smtp-source's count of DATA commands before it stopped

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Result:
    shape: str
    server: str  # smtp-sink, archiva, postfix
    client: str  # smtp-source, load client
    tls: bool
    processes: int = 0
    expected: int = 0
    accepted: int = 0
    rate: float | None = None
    latency_ms: dict | None = None
    archived: int | None = None  # Delivery rows / Postfix queue files, counted after the run
    check: str = ""  # what the archive check found, in words
    rss_mb: dict | None = None
    cpu_ms: float | None = None  # server CPU time per accepted message
    error: str | None = None
    exact: bool = True  # the client knows exactly which messages got 250
    round: int = 1  # --rounds: the pair of smtp-sink and Archiva runs this belongs to

    @property
    def label(self) -> str:
        name = f"{self.server} p={self.processes}" if self.server == "archiva" else self.server
        again = f" (round {self.round})" if self.round > 1 else ""
        return f"{name}, {self.client}, {'STARTTLS' if self.tls else 'no TLS'}{again}"

    @property
    def lost(self) -> bool:
        """A message answered 250 that is not in the archive."""
        return self.exact and self.archived is not None and self.archived < self.accepted


def human_bytes(size: int) -> str:
    for unit, factor in (("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("MB", 1 << 20), ("M", 1 << 20), ("KB", 1 << 10), ("K", 1 << 10)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


# --- processes, ports, memory ----------------------------------------------------------


def log(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (several with SO_REUSEPORT)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                count += 1
    return count


def wait_listening(port: int, count: int, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening_sockets(port) >= count:
            return
        if not alive():
            raise RuntimeError("the server exited before listening")
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def start_process(cmd: list[str], log_file: Path, env: dict | None = None) -> subprocess.Popen:
    """A child in its own session (Ctrl-C reaches only us; we stop it in order)."""
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> int | None:
    """SIGTERM, wait, then SIGKILL the process group this benchmark created."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"  process {proc.pid} ignored SIGTERM for {grace:.0f}s; killing its group")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group we started, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def tree_rss_mb(pid: int) -> float:
    """Sum of VmRSS over the process and its descendants, in MB."""
    total_kb = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the process tree, including its reaped children."""
    ticks = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError):
            continue
    return ticks / CLOCK_TICKS


class Sampler:
    """Samples a server's process tree in a thread: RSS before, peak during and after; CPU time used."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> float:
        rss = tree_rss_mb(self.pid)
        self.samples.append((time.monotonic(), rss))
        return rss

    def __enter__(self) -> Sampler:
        self.sample()
        self._cpu_start = tree_cpu_seconds(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        time.sleep(0.5)  # let in-flight work settle before the "after" sample
        self.sample()
        self.cpu_seconds = tree_cpu_seconds(self.pid) - self._cpu_start

    def summary(self) -> dict:
        values = [rss for _, rss in self.samples]
        return {"before": round(values[0], 1), "peak": round(max(values), 1), "after": round(values[-1], 1)}

    def cpu_ms_per_message(self, accepted: int) -> float | None:
        return round(1000 * self.cpu_seconds / accepted, 2) if accepted else None


# --- load generators --------------------------------------------------------------------


def run_smtp_source(port: int, shape: Shape, recipient: str) -> Outcome:
    """smtp-source, one message per connection; it exits non-zero at the first refusal."""
    cmd = [SMTP_SOURCE, "-c", "-l", str(shape.size), "-m", str(shape.messages), "-s", str(shape.sessions)]
    cmd += ["-f", SENDER, "-t", recipient, f"{HOST}:{port}"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=shape.timeout, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        done = _last_count(exc.stdout or b"")
        error = f"smtp-source timed out after {shape.timeout:.0f}s"
        return Outcome(done, time.perf_counter() - started, error=error, exact=False)
    elapsed = time.perf_counter() - started
    done = _last_count(proc.stdout)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        error = f"smtp-source exit {proc.returncode}: {message[-1] if message else ''}"
        return Outcome(done, elapsed, error=error, exact=False)
    return Outcome(shape.messages, elapsed)


def _last_count(output: bytes) -> int:
    """smtp-source -c prints a running count of completed DATA commands, separated by CR."""
    counts = [part for part in output.replace(b"\n", b"\r").split(b"\r") if part.strip().isdigit()]
    return int(counts[-1]) if counts else 0


def run_load_client(
    port: int, shape: Shape, recipient: str, *, cafile: Path | None, per_connection: bool = False
) -> Outcome:
    """bench/_smtp_load.py in its own process; STARTTLS when a CA file is given."""
    cmd = [PYTHON, str(LOAD_CLIENT), f"{HOST}:{port}", "--to", recipient, "--from", SENDER, "--json"]
    cmd += ["--messages", str(shape.messages), "--size", str(shape.size), "--sessions", str(shape.sessions)]
    cmd += ["--deadline", str(shape.timeout)]
    if cafile is not None:
        cmd += ["--starttls", "--cafile", str(cafile), "--server-name", "localhost"]
    if per_connection:
        cmd.append("--per-connection")
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=shape.timeout + 60, start_new_session=True)
    except subprocess.TimeoutExpired:
        return Outcome(0, shape.timeout, error="load client did not finish")
    try:
        report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Outcome(0, 0.0, error=f"load client failed: {proc.stderr.decode(errors='replace')[-500:]}")
    errors = report["errors"]
    refused = {code: n for code, n in report["replies"].items() if code != "250"}
    error = "; ".join([*([f"replies {refused}"] if refused else []), *errors[:3]]) or None
    return Outcome(report["accepted"], report["elapsed"], report["latency_ms"], report["replies"], error)


def result_from(shape: Shape, server: str, client: str, tls: bool, outcome: Outcome, **extra) -> Result:
    return Result(
        shape=shape.name,
        server=server,
        client=client,
        tls=tls,
        expected=shape.messages,
        accepted=outcome.accepted,
        rate=round(outcome.rate, 1),
        latency_ms=outcome.latency_ms,
        error=outcome.error,
        exact=outcome.exact,
        **extra,
    )


# --- TLS material ------------------------------------------------------------------------


@dataclass
class TLSFiles:
    ca: Path  # what clients trust
    cert: Path  # leaf + chain
    key: Path
    combined: Path  # key then chain, for Postfix's smtpd_tls_chain_files


def make_tls(folder: Path) -> TLSFiles:
    """A throwaway CA and a certificate for localhost / 127.0.0.1."""
    import trustme

    folder.mkdir(mode=0o700)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = TLSFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "combined.pem")
    ca.cert_pem.write_to_path(files.ca)
    for index, pem in enumerate(leaf.cert_chain_pems):
        pem.write_to_path(files.cert, append=index > 0)
    leaf.private_key_pem.write_to_path(files.key)
    leaf.private_key_and_cert_chain_pem.write_to_path(files.combined)
    for path in (files.key, files.combined):
        path.chmod(0o600)
    return files


# --- smtp-sink ---------------------------------------------------------------------------


@contextlib.contextmanager
def smtp_sink(workdir: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    cmd = [SMTP_SINK, *(["-u", "nobody"] if os.geteuid() == 0 else []), f"{HOST}:{port}", "256"]
    log_file = workdir / "smtp-sink.log"
    proc = start_process(cmd, log_file)
    try:
        wait_listening(port, 1, 10, lambda: proc.poll() is None)
        yield port, proc
    finally:
        stop_process(proc, grace=5)


def measure_sink(workdir: Path, shape: Shape, recipient: str, *, number: int = 1) -> list[Result]:
    """smtp-sink with smtp-source (and, in the first round, the load client)."""
    results = []
    with smtp_sink(workdir) as (port, proc):
        drivers = [("smtp-source", lambda: run_smtp_source(port, shape, recipient))]
        if number == 1:
            drivers.append(("load client", lambda: run_load_client(port, shape, recipient, cafile=None)))
        for client, drive in drivers:
            with Sampler(proc.pid) as usage:
                outcome = drive()
            result = result_from(
                shape, "smtp-sink", client, False, outcome, cpu_ms=usage.cpu_ms_per_message(outcome.accepted)
            )
            result.round = number
            results.append(report(result))
    return results


# --- Archiva ------------------------------------------------------------------------------


class Archiva:
    """A migrated template data folder with one tenant; each run ingests into a fresh copy of it."""

    SETUP = """
import json
from regions.current import current_region
from tenants.access import current_token
from tenants.actions import create_tenant
from tenants.models import User
owner = User.objects.create_user("bench-owner@contoso.com", None)
tenant = create_tenant("Benchmark tenant", owner)
address = f"journal-{current_token(tenant).token}@{current_region().journal_domain}"
print(MARK + json.dumps({"tenant": tenant.pk, "address": address}))
"""

    VERIFY = """
import json
from django.conf import settings
from infra.storage import StorageError
from ingest.models import Delivery
from tenants.models import Tenant
tenant = Tenant.objects.get(pk=TENANT)
rows = Delivery.objects.filter(tenant=tenant).select_related("tenant")
missing, hashes = 0, []
for row in rows.iterator(chunk_size=2000):
    hashes.append(row.sha256)
    try:
        row.read_report()  # its bytes are in the bucket and match its SHA-256
    except StorageError:
        missing += 1
spool = settings.ARCHIVA_SPOOL_DIR
left = len(list(spool.glob("in-*"))) if spool.is_dir() else 0
distinct = len(set(hashes))
print(MARK + json.dumps({"rows": len(hashes), "distinct": distinct, "missing": missing, "spool": left}))
"""

    def __init__(self, workdir: Path, tls: TLSFiles):
        self.workdir, self.tls = workdir, tls
        self.template = workdir / "archiva-template"
        self.tenant = 0
        self.address = ""
        self._runs = 0

    def env(self, data_dir: Path, *, require_tls: bool = True) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("ARCHIVA_", "DJANGO_"))
            and name not in SCALE_VARS
            and name.removesuffix("_FILE") not in SCALE_VARS
        }
        env.update(
            DJANGO_SETTINGS_MODULE="archiva.settings",
            PYTHONUNBUFFERED="1",
            ARCHIVA_DATA_DIR=str(data_dir),
            ARCHIVA_SMTP_HOST=HOST,
            ARCHIVA_TLS_CERT=str(self.tls.cert),
            ARCHIVA_TLS_KEY=str(self.tls.key),
            ARCHIVA_SMTP_REQUIRE_TLS="1" if require_tls else "0",
            # Capacity, not policy: one benchmark tenant stands for many, and
            # the loopback sender is not Exchange Online.
            ARCHIVA_TENANT_RATE="0",
            ARCHIVA_PEER_RATE="0",
            ARCHIVA_SENDER_ALLOWLIST="0",
            ARCHIVA_SENDER_FCRDNS="0",
            # A port of its own: the machine is shared with other test runs.
            ARCHIVA_METRICS_PORT=str(free_port()),
        )
        return env

    def manage(self, data_dir: Path, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.env(data_dir),
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return proc.stdout

    def snippet(self, data_dir: Path, code: str) -> dict:
        out = self.manage(data_dir, "shell", "-c", f"MARK = {MARK!r}\n{code}")
        lines = [line for line in out.splitlines() if line.startswith(MARK)]
        if not lines:
            raise RuntimeError(f"no result from a Django snippet:\n{out[-2000:]}")
        return json.loads(lines[-1][len(MARK) :])

    def prepare(self) -> None:
        started = time.monotonic()
        self.template.mkdir()
        self.manage(self.template, "migrate", "--noinput")
        made = self.snippet(self.template, self.SETUP)
        self.tenant, self.address = made["tenant"], made["address"]
        log(f"Archiva: migrated a fresh SQLite data folder in {time.monotonic() - started:.1f}s; tenant {self.tenant}")

    def fresh_data_dir(self) -> Path:
        """A copy of the migrated template for one run.

        Run folders (and Postfix's queues) stay until the work folder goes at
        the end: deleting a run's thousands of files just before the next run
        makes ext4's inode allocator step over recently deleted inodes
        (find_inode_bit -> recently_deleted: 21 % of the ingest's CPU under
        perf), which would slow whichever server runs next."""
        self._runs += 1
        data_dir = self.workdir / f"archiva-run-{self._runs}"
        shutil.copytree(self.template, data_dir)
        return data_dir

    @contextlib.contextmanager
    def ingest(self, data_dir: Path, processes: int, *, require_tls: bool) -> Iterator[tuple[int, subprocess.Popen]]:
        port = free_port()
        cmd = [PYTHON, "manage.py", "smtpd", "--host", HOST, "--port", str(port), "--processes", str(processes)]
        log_file = data_dir / "smtpd.log"
        proc = start_process(cmd, log_file, self.env(data_dir, require_tls=require_tls))
        try:
            try:
                wait_listening(port, processes, 90, lambda: proc.poll() is None)
            except RuntimeError as exc:
                raise RuntimeError(f"ingest did not start: {exc}\n{tail(log_file)}") from None
            yield port, proc
        finally:
            code = stop_process(proc, grace=60)
            if code not in (0, None):
                log(f"  ingest exited with {code}:\n{tail(log_file)}")

    def verify(self, data_dir: Path, accepted: int) -> tuple[int, str]:
        found = self.snippet(data_dir, self.VERIFY.replace("TENANT", str(self.tenant)))
        rows = found["rows"]
        problems = []
        if rows != accepted:
            problems.append(f"{rows} rows for {accepted} accepted")
        if found["distinct"] != rows:
            problems.append(f"only {found['distinct']} distinct contents")
        if found["missing"]:
            problems.append(f"{found['missing']} messages missing from the bucket or not matching their SHA-256")
        if found["spool"]:
            problems.append(f"{found['spool']} spool files left")
        return rows, ("ok: " + f"{rows} rows, bytes verified") if not problems else "; ".join(problems)

    def measure(
        self, shape: Shape, processes: int, *, tls: bool, drive: Callable[[int], Outcome], client: str
    ) -> Result:
        data_dir = self.fresh_data_dir()
        try:
            with self.ingest(data_dir, processes, require_tls=tls) as (port, proc), Sampler(proc.pid) as rss:
                outcome = drive(port)
            result = result_from(
                shape,
                "archiva",
                client,
                tls,
                outcome,
                processes=processes,
                rss_mb=rss.summary(),
                cpu_ms=rss.cpu_ms_per_message(outcome.accepted),
            )
            result.archived, result.check = self.verify(data_dir, outcome.accepted)
            if not outcome.exact:
                result.check = (
                    f"{result.archived} rows; smtp-source stopped at a refusal after {outcome.accepted} DATA "
                    "commands and does not say which were accepted"
                )
            elif outcome.error and result.archived > outcome.accepted:
                result.check += " (the client stopped early; rows beyond its count were in flight)"
            return result
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            return Result(shape.name, "archiva", client, tls, processes, shape.messages, error=str(exc))


def measure_plain(archiva: Archiva, shape: Shape, processes: int, number: int = 1) -> Result:
    """Archiva with TLS off driven by smtp-source, exactly as smtp-sink is: the ratio's pair."""
    result = archiva.measure(
        shape,
        processes,
        tls=False,
        client="smtp-source",
        drive=lambda port: run_smtp_source(port, shape, archiva.address),
    )
    result.round = number
    return report(result)


def measure_archiva(archiva: Archiva, shape: Shape, processes: list[int], per_connection: bool) -> list[Result]:
    results = [measure_plain(archiva, shape, count) for count in processes]
    for count in processes:
        result = archiva.measure(
            shape,
            count,
            tls=True,
            client="load client" + (" (per connection)" if per_connection else ""),
            drive=lambda port: run_load_client(
                port, shape, archiva.address, cafile=archiva.tls.ca, per_connection=per_connection
            ),
        )
        results.append(report(result))
    return results


def measure_rounds(archiva: Archiva, workdir: Path, shape: Shape, processes: int, rounds: int) -> list[Result]:
    """Rounds 2..N of the ratio's pair, alternating smtp-sink and Archiva (no TLS, smtp-source).

    One pair of runs of a second or two each is at the mercy of whatever
    else the machine does at that moment (smtp-sink alone has measured from
    2,100 to 4,500 msgs/s here); the summary gives the median of the rounds'
    ratios and their range.
    """
    results = []
    for number in range(2, rounds + 1):
        results += measure_sink(workdir, shape, archiva.address, number=number)
        results.append(measure_plain(archiva, shape, processes, number))
    return results


# --- Postfix ------------------------------------------------------------------------------


class PostfixUnavailable(Exception):
    pass


class Postfix:
    """A private Postfix instance: smtpd with STARTTLS on a loopback port, mail held on disk.

    Its own config_directory, queue_directory and data_directory in the
    benchmark's folder; every message is put on hold (check_client_access
    static:HOLD), so the queue manager delivers nothing: what is measured
    is smtpd + cleanup writing and fsyncing the queue file before its 250.
    """

    SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def __init__(self, folder: Path, tls: TLSFiles):
        self.folder = folder
        self.config = folder / "etc"
        self.queue = folder / "spool"
        self.data = folder / "data"
        self.maillog = folder / "maillog"
        self.tls = tls
        self.port = free_port()
        self.master_pid: int | None = None

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.localdomain",
            "mydestination": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "message_size_limit": 200 * 1024 * 1024,
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "check_client_access static:HOLD, permit_mynetworks, reject",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": self.tls.combined,
            "smtpd_tls_loglevel": "0",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.folder,
        }
        return "".join(f"{name} = {value}\n" for name, value in settings.items())

    def master_cf(self) -> str:
        return f"{HOST}:{self.port} inet n - n - - smtpd\n{self.SERVICES}"

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config), *args], capture_output=True, text=True, timeout=60, start_new_session=True
        )
        if check and proc.returncode != 0:
            raise PostfixUnavailable(
                f"postfix {' '.join(args)} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-800:]}\n"
                f"{tail(self.maillog)}"
            )
        return proc

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PostfixUnavailable("a private Postfix instance needs root to start")
        try:
            owner = pwd.getpwnam("postfix")
        except KeyError:
            raise PostfixUnavailable(f"no postfix user: {APT_HINT}") from None
        for path in (self.config, self.queue, self.data):
            path.mkdir(parents=True)
        self.folder.chmod(0o755)  # Postfix's daemons run as the postfix user
        os.chown(self.data, owner.pw_uid, owner.pw_gid)
        (self.config / "main.cf").write_text(self.main_cf())
        (self.config / "master.cf").write_text(self.master_cf())
        self.postfix("check")  # also creates the queue's folders with the right owners
        self.postfix("start")
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            self.master_pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            raise PostfixUnavailable(f"postfix started but wrote no master.pid\n{tail(self.maillog)}") from None
        try:
            wait_listening(self.port, 1, 30, lambda: _alive(self.master_pid))
        except RuntimeError as exc:
            raise PostfixUnavailable(f"{exc}\n{tail(self.maillog)}") from None

    def stop(self) -> None:
        if not (self.config / "main.cf").exists():
            return
        self.postfix("stop", check=False)
        deadline = time.monotonic() + 30
        while self.master_pid and _alive(self.master_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.master_pid and _alive(self.master_pid):
            self.postfix("abort", check=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master_pid, signal.SIGKILL)

    def queued(self) -> int:
        """Queue files on disk (every accepted message is one)."""
        return sum(
            1
            for name in ("hold", "incoming", "active", "deferred")
            for path in (self.queue / name).rglob("*")
            if path.is_file()
        )

    def measure(self, shape: Shape, per_connection: bool) -> Result:
        client = "load client" + (" (per connection)" if per_connection else "")
        try:
            self.start()
            with Sampler(self.master_pid) as rss:
                outcome = run_load_client(
                    self.port, shape, "journal@archive.archiva.com", cafile=self.tls.ca, per_connection=per_connection
                )
            result = result_from(
                shape,
                "postfix",
                client,
                True,
                outcome,
                rss_mb=rss.summary(),
                cpu_ms=rss.cpu_ms_per_message(outcome.accepted),
            )
            self.stop()
            result.archived = self.queued()
            result.check = (
                f"ok: {result.archived} queue files"
                if result.archived == outcome.accepted
                else f"{result.archived} queue files for {outcome.accepted} accepted"
            )
            return result
        except (PostfixUnavailable, OSError, subprocess.SubprocessError) as exc:
            return Result(shape.name, "postfix", client, True, 0, shape.messages, error=f"Postfix unavailable: {exc}")
        finally:
            self.stop()  # its queue files go with the work folder at the end (see Archiva.fresh_data_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; Postfix's master is not our child, so it is reaped by init.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False


# --- soak ----------------------------------------------------------------------------------


@dataclass
class Soak:
    messages: int
    processes: int
    series: list[tuple[int, float]] = field(default_factory=list)  # (messages accepted so far, RSS MB)
    peak: float = 0.0
    accepted: int = 0
    archived: int | None = None
    check: str = ""
    rate: float = 0.0
    error: str | None = None

    def growth(self) -> tuple[float, float] | None:
        """(MB, fraction) from the end of the first chunk (warm) to the end."""
        if len(self.series) < 3:
            return None
        warm, last = self.series[1][1], self.series[-1][1]
        return last - warm, (last - warm) / warm if warm else 0.0

    @property
    def flat(self) -> bool | None:
        growth = self.growth()
        return None if growth is None else growth[0] <= max(10.0, 0.05 * self.series[1][1])


def soak(archiva: Archiva, total: int, sessions: int, size: int, processes: int) -> Soak:
    """N messages with STARTTLS in SOAK_CHUNKS runs against one ingest; RSS after each run."""
    result = Soak(total, processes)
    chunk = Shape("soak", math.ceil(total / SOAK_CHUNKS), size, sessions, False)
    data_dir = archiva.fresh_data_dir()
    elapsed = 0.0
    log(f"Soak: {total:,} messages × {human_bytes(size)} with STARTTLS, {SOAK_CHUNKS} runs of {chunk.messages:,}")
    try:
        with archiva.ingest(data_dir, processes, require_tls=True) as (port, proc), Sampler(proc.pid) as rss:
            result.series.append((0, rss.sample()))
            for _ in range(SOAK_CHUNKS):
                outcome = run_load_client(port, chunk, archiva.address, cafile=archiva.tls.ca)
                result.accepted += outcome.accepted
                elapsed += outcome.elapsed
                time.sleep(0.5)
                result.series.append((result.accepted, rss.sample()))
                log(
                    f"  {result.accepted:>9,} accepted  RSS {result.series[-1][1]:7.1f} MB  ({outcome.rate:.0f} msgs/s)"
                )
                if outcome.error:
                    result.error = outcome.error
                    break
            result.peak = max(value for _, value in rss.samples)
        result.rate = result.accepted / elapsed if elapsed else 0.0
        result.archived, result.check = archiva.verify(data_dir, result.accepted)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.error = str(exc)
    return result


# --- reporting -----------------------------------------------------------------------------


def report(result: Result) -> Result:
    """One progress line as soon as a run is done."""
    line = f"  {result.label:<44} {fmt(result.rate, '8.1f')} msgs/s  {result.accepted}/{result.expected} accepted"
    if (result.latency_ms or {}).get("p99") is not None:
        line += f"  p99 {result.latency_ms['p99']} ms"
    if result.check:
        line += f"  [{result.check}]"
    log(line)
    if result.error:
        log(f"    ! {result.error}")
    return result


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-".rjust(int(spec.split(".")[0]) if spec[0].isdigit() else 1)
    return format(value, spec)


def find(results: list[Result], server: str, tls: bool, processes: int = 0, client: str = "") -> Result | None:
    for result in results:
        if (
            result.server == server
            and result.tls == tls
            and (not processes or result.processes == processes)
            and result.client.startswith(client)
            and result.rate
            and not result.error
        ):
            return result
    return None


def ratio_rows(shape: Shape, results: list[Result], processes: list[int]) -> list[tuple[str, str, str, str]]:
    """(what, value, target, verdict) rows of one shape."""
    mine = [r for r in results if r.shape == shape.name]
    sink = find(mine, "smtp-sink", False, client="smtp-source")
    postfix = find(mine, "postfix", True)
    plain = {count: find(mine, "archiva", False, count) for count in processes}
    tls = {count: find(mine, "archiva", True, count) for count in processes}
    rows = []
    for count, run in plain.items():
        ratios = round_ratios(mine, count)
        if len(ratios) > 1:
            value = statistics.median(ratios)
            rows.append(
                (
                    f"archiva_notls p={count} / smtp_sink, median",
                    f"{value:.2f}",
                    *_verdict(shape, value >= TARGET_SINK_RATIO),
                )
            )
            rows.append((f"  the {len(ratios)} rounds", " ".join(f"{r:.2f}" for r in ratios), "(info)", ""))
        elif sink and run:
            value = run.rate / sink.rate
            rows.append(
                (f"archiva_notls p={count} / smtp_sink", f"{value:.2f}", *_verdict(shape, value >= TARGET_SINK_RATIO))
            )
    for count, run in tls.items():
        if postfix and run:
            rows.append((f"archiva_tls p={count} / postfix_tls", f"{run.rate / postfix.rate:.2f}", "(>1: faster)", ""))
    for count, run in tls.items():
        p99 = (run.latency_ms or {}).get("p99") if run else None
        if p99 is not None:
            rows.append(
                (
                    f"archiva_tls p={count} p99 end-of-DATA->250",
                    f"{p99:g} ms",
                    *_verdict(shape, p99 < TARGET_P99_MS, p99=True),
                )
            )
    if postfix and (postfix.latency_ms or {}).get("p99") is not None:
        rows.append(("postfix_tls p99 end-of-DATA->250", f"{postfix.latency_ms['p99']:g} ms", "(info)", ""))
    archiva_runs = [r for r in mine if r.server == "archiva"]
    if archiva_runs:
        lost = [r.label for r in archiva_runs if r.lost]
        unchecked = [r.label for r in archiva_runs if r.archived is None or not r.exact]
        verdict = "LOST MESSAGES" if lost else ("ok" if not unchecked else "UNCHECKED")
        rows.append(("every accepted message archived", "no" if lost else "yes", "yes", verdict))
    return rows


def round_ratios(results: list[Result], processes: int) -> list[float]:
    """Archiva no TLS / smtp-sink (both with smtp-source) of each round that has both."""
    ratios = []
    for number in sorted({r.round for r in results}):
        sink = find([r for r in results if r.round == number], "smtp-sink", False, client="smtp-source")
        run = find([r for r in results if r.round == number], "archiva", False, processes, client="smtp-source")
        if sink and run:
            ratios.append(run.rate / sink.rate)
    return ratios


def _verdict(shape: Shape, met: bool, p99: bool = False) -> tuple[str, str]:
    """(target, verdict): the issue states its targets for the main shape only."""
    if not shape.primary:
        return "(info)", ""
    target = f"< {TARGET_P99_MS:g} ms" if p99 else f">= {TARGET_SINK_RATIO}"
    return target, "ok" if met else "MISSED"


def print_summary(shapes: list[Shape], results: list[Result], processes: list[int], soaked: Soak | None) -> None:
    log("\n" + "=" * 110)
    log(f"SUMMARY  bench/smtp.py  {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  load avg {_loadavg()}")
    for shape in shapes:
        log(f"\n{shape.name}: {shape.title}")
        log(
            f"  {'run':<44} {'msgs/s':>8} {'accepted':>11} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>10}  "
            f"{'RSS MB before/peak/after':<26} archive check"
        )
        for r in (r for r in results if r.shape == shape.name):
            lat = r.latency_ms or {}
            rss = f"{r.rss_mb['before']:.0f} / {r.rss_mb['peak']:.0f} / {r.rss_mb['after']:.0f}" if r.rss_mb else "-"
            check = r.check or ("-" if r.server == "smtp-sink" else "")
            log(
                f"  {r.label:<44} {fmt(r.rate, '8.1f')} {f'{r.accepted}/{r.expected}':>11} "
                f"{fmt(lat.get('p50'), '8.1f')} {fmt(lat.get('p99'), '8.1f')} {fmt(r.cpu_ms, '10.2f')}  "
                f"{rss:<26} {check}"
            )
            if r.error:
                log(f"    ! {r.error.splitlines()[0][:200]}")
        log(f"\n  {'ratio':<44} {'value':>10}  {'target':<14} verdict")
        for what, value, target, verdict in ratio_rows(shape, results, processes):
            log(f"  {what:<44} {value:>10}  {target:<14} {verdict}")
    if soaked is not None:
        print_soak(soaked)
    log("=" * 110)


def print_soak(soaked: Soak) -> None:
    log(f"\nsoak: {soaked.messages:,} messages with STARTTLS, ingest p={soaked.processes}: RSS (MB) of the ingest")
    log("  " + "  ".join(f"{done:,}: {rss:.1f}" for done, rss in soaked.series))
    growth = soaked.growth()
    if growth is not None:
        verdict = "flat" if soaked.flat else "GROWING"
        middle = soaked.series[len(soaked.series) // 2]
        log(
            f"  after warm-up ({soaked.series[1][0]:,} msgs) to the end: {growth[0]:+.1f} MB ({growth[1]:+.1%}); "
            f"second half ({middle[0]:,} to {soaked.series[-1][0]:,}): {soaked.series[-1][1] - middle[1]:+.1f} MB; "
            f"peak {soaked.peak:.1f} MB -> {verdict} (flat = at most +10 MB or +5 % after warm-up)"
        )
    log(f"  {soaked.accepted:,} accepted at {soaked.rate:.0f} msgs/s; archive check: {soaked.check or '-'}")
    if soaked.error:
        log(f"  ! {soaked.error.splitlines()[0][:200]}")


def _loadavg() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SMTP ingest benchmark: Archiva against smtp-sink and Postfix (issue 4).",
        epilog=f"Needs `{APT_HINT}`. Targets: archiva_notls/smtp_sink >= {TARGET_SINK_RATIO}, "
        f"p99 < {TARGET_P99_MS:g} ms, memory flat under --soak.",
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages of the main shape (default 2000)")
    parser.add_argument("--size", type=parse_size, default=20480, help="body size of the main shape (default 20480)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions of the main shape (default 20)")
    parser.add_argument("--large-messages", type=int, default=100, help="messages of the large shape (default 100)")
    parser.add_argument("--large-size", type=parse_size, default=5 << 20, help="body size of the large shape (5MB)")
    parser.add_argument("--large-sessions", type=int, default=10, help="sessions of the large shape (default 10)")
    parser.add_argument("--skip-large", action="store_true", help="only the main shape")
    parser.add_argument("--processes", default="1,2", help="ingest process counts to measure (default 1,2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="pairs of smtp-sink and Archiva (no TLS) runs of the main shape for the ratio's median (default 3)",
    )
    parser.add_argument("--skip-postfix", action="store_true", help="do not set up the Postfix comparison")
    parser.add_argument("--per-connection", action="store_true", help="TLS load: one message per connection")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also send N messages to one ingest (RSS)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 × 20 KB and 10 × 5 MB")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) for inspection")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every result to FILE")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.large_messages, args.large_sessions = 200, 10, 5
    try:
        args.processes = sorted({int(part) for part in args.processes.split(",") if part.strip()})
    except ValueError:
        parser.error("--processes takes a comma-separated list of numbers, e.g. 1,2")
    if not args.processes or min(args.processes) < 1:
        parser.error("--processes needs at least one count of 1 or more")
    if min(args.messages, args.sessions, args.large_messages, args.large_sessions, args.rounds) < 1 or args.soak < 0:
        parser.error("message and session counts must be positive")
    return args


def shapes_from(args: argparse.Namespace) -> list[Shape]:
    shapes = [Shape(f"{human_bytes(args.size)} shape", args.messages, args.size, args.sessions, True)]
    if not args.skip_large:
        shapes.append(
            Shape(
                f"{human_bytes(args.large_size)} shape",
                args.large_messages,
                args.large_size,
                args.large_sessions,
                False,
            )
        )
    return shapes


def check_prerequisites() -> None:
    missing = [tool for tool in (SMTP_SOURCE, SMTP_SINK) if not os.access(tool, os.X_OK)]
    if missing:
        print(f"{', '.join(missing)} missing. Install Debian's postfix package:\n    {APT_HINT}", file=sys.stderr)
        sys.exit(2)
    try:
        import trustme  # noqa: F401
    except ImportError:
        print(f"trustme is missing: {PYTHON} -m pip install -r requirements-dev.txt", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Shape], list[Result], Soak | None]:
    tls = make_tls(workdir / "tls")
    archiva = Archiva(workdir, tls)
    archiva.prepare()
    shapes, results = shapes_from(args), []
    skip_postfix = args.skip_postfix or not os.access(POSTFIX, os.X_OK)
    for shape in shapes:
        log(f"\n{shape.name}: {shape.title}  (load avg {_loadavg()})")
        results += measure_sink(workdir, shape, archiva.address)
        results += measure_archiva(archiva, shape, args.processes, args.per_connection)
        if shape.primary:
            results += measure_rounds(archiva, workdir, shape, args.processes[0], args.rounds)
        if skip_postfix:
            log("  postfix: skipped" + ("" if args.skip_postfix else f" ({POSTFIX} missing: {APT_HINT})"))
        else:
            results.append(report(Postfix(workdir / f"postfix-{shape.size}", tls).measure(shape, args.per_connection)))
    soaked = soak(archiva, args.soak, args.sessions, args.size, args.processes[0]) if args.soak else None
    return shapes, results, soaked


def exit_code(args: argparse.Namespace, shapes: list[Shape], results: list[Result], soaked: Soak | None) -> int:
    archiva_runs = [r for r in results if r.server == "archiva"]
    if any(r.lost or r.error for r in archiva_runs) or (
        soaked and (soaked.error or soaked.archived != soaked.accepted)
    ):
        return 1
    if args.strict:
        verdicts = [row[3] for shape in shapes for row in ratio_rows(shape, results, args.processes)]
        if "MISSED" in verdicts or (soaked is not None and soaked.flat is False):
            return 1
    return 0


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, so every server is stopped and every file removed."""


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_prerequisites()
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="archiva-bench-smtp-"))
    workdir.chmod(0o711)  # Postfix's daemons (user postfix) must traverse it
    try:
        shapes, results, soaked = run(args, workdir)
        print_summary(shapes, results, args.processes, soaked)
        if args.json:
            payload = {"results": [asdict(r) for r in results], "soak": asdict(soaked) if soaked else None}
            args.json.write_text(json.dumps(payload, indent=2))
        return exit_code(args, shapes, results, soaked)
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.args[0] if isinstance(exc, Interrupted) else signal.SIGINT
        log(f"\ninterrupted by {signal.Signals(signum).name}: servers stopped")
        return 128 + signum
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
