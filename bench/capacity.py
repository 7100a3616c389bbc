"""The whole pipeline on one box: accepted -> archived + indexed, against smtp-sink in the same run.

    .venv/bin/python bench/capacity.py                       # 10,000 x 20 KB over 20 sessions, then 250->searchable
    .venv/bin/python bench/capacity.py --concurrency 1 --index-delay 2 --committer-nice 10
    .venv/bin/python bench/capacity.py --quick               # 1,000 messages, 100 for the latency

Run as root (smtp-sink drops to nobody); needs `apt-get install postfix`
for smtp-sink and smtp-source.  Everything runs on the embedded default
(SQLite, folder store, filesystem broker, embedded index), in a fresh
temporary data folder, with the processes `make run` starts for the
pipeline: `manage.py smtpd` (its committer included), the Celery
worker(s) and beat; the web is not needed.

1. Baseline: smtp-sink takes --messages x --size over --sessions from
   smtp-source (one message per connection, no TLS): what the protocol
   costs on this machine now.
2. Pipeline: the same smtp-source load to the ingest (TLS off, as for the
   sink), while a sampler reads the database every 0.25 s: rows stored,
   deliveries archived, messages indexed.  The end-to-end rate is the
   messages accepted divided by the time from the first send to the moment
   the last of them is indexed (backlog zero); it is what the box sustains
   when all stages share its cores, and its ratio to smtp-sink's rate is
   the figure of issue 21 (goal >= 0.4).  The backlog (stored, not yet
   indexed) is printed over time.
3. Latency: --latency-messages journal reports at --latency-rate per
   second on one session, each with a unique word; the time from its 250 to
   the word being found by the tenant's search (polled every 20 ms).
   Goal: p95 < 1 s at 20 messages/s.

The knobs (each also a setting of the product): --workers and
--concurrency (Celery worker processes), --index-delay and --index-batch
(ARCHIVA_INDEX_DELAY, ARCHIVA_INDEX_BATCH: index_pending's commit interval
and batch, for merges and mailbox copies; the archiving task indexes the
messages it creates itself, one commit per task), --broker-poll
(ARCHIVA_BROKER_POLL_INTERVAL, the embedded broker's polling),
--committer-nice (ARCHIVA_COMMITTER_NICE), --smtp-processes
(ARCHIVA_SMTP_PROCESSES).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from _journal_reports import send_reports  # noqa: E402  (bench/_journal_reports.py)
from smtp import (  # noqa: E402  (bench/smtp.py: smtp-sink, smtp-source, the migrated template)
    HOST,
    LOAD_CLIENT,
    PYTHON,
    SENDER,
    SMTP_SINK,
    SMTP_SOURCE,
    Archiva,
    Shape,
    free_port,
    make_tls,
    run_smtp_source,
    smtp_sink,
    start_process,
    stop_process,
    tail,
    tree_cpu_seconds,
    wait_listening,
)


def log(text: str) -> None:
    print(text, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Counts:
    """The pipeline's progress, read from the SQLite database by a thread of the bench."""

    SQL = (
        "SELECT (SELECT COUNT(*) FROM ingest_delivery),"
        " (SELECT COUNT(*) FROM ingest_delivery WHERE status IN ('archived', 'failed', 'parse_failed')),"
        " (SELECT COUNT(*) FROM archive_message WHERE index_status != 'pending')"
        ", (SELECT COUNT(*) FROM archive_message)"
    )

    def __init__(self, database: Path, interval: float = 0.25):
        self.database, self.interval = database, interval
        self.samples: list[tuple[float, int, int, int, int]] = []  # (t, stored, archived, indexed, messages)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Counts:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def read(self) -> tuple[int, int, int, int]:
        uri = f"file:{self.database}?mode=ro"
        for _ in range(50):
            try:
                with sqlite3.connect(uri, uri=True, timeout=5) as db:
                    stored, archived, indexed, messages = db.execute(self.SQL).fetchone()
                return stored, archived, indexed, messages
            except sqlite3.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"cannot read {self.database}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), *self.read()))
            self._stop.wait(self.interval)

    def latest(self) -> tuple[float, int, int, int, int]:
        return self.samples[-1] if self.samples else (time.monotonic(), 0, 0, 0, 0)


class Pipeline:
    """smtpd + worker(s) + beat on a fresh copy of the migrated data folder."""

    def __init__(self, archiva: Archiva, opts: argparse.Namespace):
        self.archiva, self.opts = archiva, opts
        self.data_dir = archiva.fresh_data_dir()
        self.port = free_port()
        self.env = archiva.env(self.data_dir, require_tls=False)
        self.env.update(
            ARCHIVA_SMTP_PORT=str(self.port),
            ARCHIVA_SMTP_PROCESSES=str(opts.smtp_processes),
            ARCHIVA_COMMITTER_NICE=str(opts.committer_nice),
            ARCHIVA_INDEX_DELAY=str(opts.index_delay),
            ARCHIVA_INDEX_BATCH=str(opts.index_batch),
            ARCHIVA_BROKER_POLL_INTERVAL=str(opts.broker_poll),
            ARCHIVA_WORKER_HEARTBEAT_INTERVAL="0.5",
            ARCHIVA_LOG_LEVEL="warning",
        )
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self) -> None:
        env = self.env
        smtpd = [PYTHON, "manage.py", "smtpd", "--host", HOST, "--port", str(self.port)]
        self.procs.append(("smtpd", start_process(smtpd, self.data_dir / "smtpd.log", env)))
        for n in range(self.opts.workers):
            heartbeat = self.data_dir / f"worker{n}.heartbeat"
            cmd = [PYTHON, "-m", "celery", "-A", "archiva", "worker", "--loglevel=warning"]
            cmd += ["-c", str(self.opts.concurrency), "-n", f"capacity{n}@%h"]
            worker_env = dict(env, ARCHIVA_WORKER_HEARTBEAT_PATH=str(heartbeat))
            self.procs.append((f"worker{n}", start_process(cmd, self.data_dir / f"worker{n}.log", worker_env)))
        beat = [PYTHON, "-m", "celery", "-A", "archiva", "beat", "--loglevel=warning"]
        beat += ["--schedule", str(self.data_dir / "celerybeat-schedule")]
        self.procs.append(("beat", start_process(beat, self.data_dir / "beat.log", env)))
        smtpd_proc = self.procs[0][1]
        wait_listening(self.port, self.opts.smtp_processes, 90, lambda: smtpd_proc.poll() is None)
        deadline = time.monotonic() + 90
        # Ready when every worker's consumer is connected: its heartbeat file (archive.heartbeat).
        while not all((self.data_dir / f"worker{n}.heartbeat").exists() for n in range(self.opts.workers)):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start:\n" + tail(self.data_dir / "worker0.log"))
            time.sleep(0.1)

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            code = stop_process(proc, grace=30)
            if code not in (0, None, -signal.SIGTERM):
                log(f"  {name} exited with {code}:\n{tail(self.data_dir / f'{name}.log')}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process tree (smtpd includes its committer and ingest processes)."""
        return {name: tree_cpu_seconds(proc.pid) for name, proc in self.procs}

    def alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} died:\n{tail(self.data_dir / f'{name}.log')}")


def drain(pipeline: Pipeline, counts: Counts, accepted: int, timeout: float) -> float | None:
    """Wait until every accepted message is archived and indexed; the moment it was, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.alive()
        t, stored, archived, indexed, messages = counts.latest()
        if stored >= accepted and archived >= stored and messages and indexed >= messages:
            return t
        time.sleep(0.1)
    return None


def print_timeline(counts: Counts, started: float, every: float = 2.0) -> None:
    log("    t (s)   stored  archived   indexed   backlog (stored - indexed)")
    next_t = 0.0
    for t, stored, archived, indexed, _ in counts.samples:
        if t - started >= next_t:
            log(f"  {t - started:7.1f}  {stored:7d}  {archived:8d}  {indexed:8d}  {stored - indexed:8d}")
            next_t += every


def measure_latency(pipeline: Pipeline, address: str, tenant_id: int, count: int, rate: float) -> list[float]:
    """250 -> found by the tenant's search, per message, sent at `rate` on one session."""
    os.environ.update(pipeline.env)
    import django

    django.setup()
    from search.backends import get_backend
    from search.backends.base import Scope

    acked: dict[str, float] = {}
    lock = threading.Lock()

    def send_all() -> None:
        with smtplib.SMTP(HOST, pipeline.port, timeout=60) as client:
            client.ehlo("capacity.bench")
            send_reports(client, address, count, rate, acked, lock)

    sender = threading.Thread(target=send_all)
    sender.start()
    backend, scope = get_backend(), Scope(tenant_id=tenant_id, addresses=None)
    found: dict[str, float] = {}
    while sender.is_alive() or len(found) < len(acked):
        with lock:
            waiting = [m for m in acked if m not in found]
        for marker in waiting:
            if time.monotonic() - acked[marker] > 60:
                found[marker] = float("inf")
            elif backend.search(scope, marker, limit=1).count:
                found[marker] = time.monotonic()
        time.sleep(0.02)
    sender.join()
    return [found[m] - acked[m] for m in acked]


def sustain(pipeline: Pipeline, counts: Counts, address: str, opts: argparse.Namespace) -> dict:
    """Send at a fixed rate for a while; is the backlog (stored, not yet indexed) flat?

    bench/_smtp_load.py, in a process of its own, sends --sustain-rate
    Exchange journal reports a second (each ~--size, with its own
    Message-ID) over --sustain-sessions sessions: one event loop that
    pipelines MAIL, RCPT and DATA, so the load costs the box about what
    smtp-source costs the other phases (its CPU is printed).  The backlog's
    slope is fitted over the window after its first fifth (the pipeline's
    start-up): flat when it grows by less than 2% of the rate (or 1 message)
    per second."""
    rate, seconds, sessions = opts.sustain_rate, opts.sustain_seconds, opts.sustain_sessions
    messages = max(1, int(rate * seconds))
    cmd = [PYTHON, str(LOAD_CLIENT), f"{HOST}:{pipeline.port}", "--to", address, "--from", SENDER, "--json"]
    cmd += ["--messages", str(messages), "--size", str(opts.size), "--sessions", str(sessions)]
    cmd += ["--rate", str(rate), "--journal", "--deadline", str(seconds * 3 + 60)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, timeout=seconds * 3 + 120, start_new_session=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"the load client failed: {proc.stderr.decode(errors='replace')[-2000:]}") from None
    client_ms = 1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / messages
    accepted, refused = result["accepted"], result["attempted"] - result["accepted"]
    if result["errors"]:
        log(f"  load client errors: {result['errors'][:3]}")
    ended = time.monotonic()
    window = [
        (t, stored - indexed) for t, stored, _, indexed, _ in counts.samples if started + seconds / 5 <= t <= ended
    ]
    slope = 0.0
    if len(window) > 2:
        mean_t = statistics.fmean(t for t, _ in window)
        mean_b = statistics.fmean(b for _, b in window)
        slope = sum((t - mean_t) * (b - mean_b) for t, b in window) / sum((t - mean_t) ** 2 for t, _ in window)
    achieved = accepted / (ended - started)
    flat = slope <= max(1.0, 0.02 * rate) and not refused
    backlog = [b for _, b in window]
    log(
        f"  sustained {rate:g}/s for {seconds:g} s: {accepted} accepted ({achieved:.0f}/s), {refused} refused; "
        f"backlog {min(backlog, default=0)}..{max(backlog, default=0)}, slope {slope:+.1f} msgs/s: "
        f"{'FLAT' if flat else 'GROWING'}; the load client used {client_ms:.2f} ms CPU a message"
    )
    # The ingest's answer under this load: end of DATA -> 250 (durable), as the sender waits for it.
    ack = result["latency_ms"]
    log(f"  end of DATA -> 250 under this load: p50 {ack['p50']} ms, p95 {ack['p95']} ms, max {ack['max']} ms")
    return {
        "sustain_rate": rate,
        "sustain_seconds": seconds,
        "sustain_achieved": round(achieved, 1),
        "sustain_backlog_slope": round(slope, 2),
        "sustain_flat": flat,
        "sustain_client_cpu_ms": round(client_ms, 3),
        "sustain_ack_ms": ack,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=20 * 1024)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes (each with --concurrency)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (make run: 2)")
    parser.add_argument("--index-delay", type=float, default=0.2, help="ARCHIVA_INDEX_DELAY, seconds")
    parser.add_argument("--index-batch", type=int, default=500, help="ARCHIVA_INDEX_BATCH")
    parser.add_argument("--broker-poll", type=float, default=0.1, help="ARCHIVA_BROKER_POLL_INTERVAL, seconds")
    parser.add_argument("--committer-nice", type=int, default=5, help="ARCHIVA_COMMITTER_NICE")
    parser.add_argument("--smtp-processes", type=int, default=1, help="ARCHIVA_SMTP_PROCESSES")
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=20.0)
    parser.add_argument("--sustain-rate", type=float, default=0, help="also send at this rate (msgs/s) ...")
    parser.add_argument("--sustain-seconds", type=float, default=600, help="... for this long (default 10 min)")
    parser.add_argument("--sustain-sessions", type=int, default=4, help="... over this many sessions")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--quick", action="store_true", help="1,000 messages and 100 for the latency")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and the logs")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.messages, opts.latency_messages = 1000, 100
    return opts


def run(opts: argparse.Namespace, workdir: Path) -> dict:
    shape = Shape("capacity", opts.messages, opts.size, opts.sessions, True)
    archiva = Archiva(workdir, make_tls(workdir / "tls"))
    archiva.prepare()
    knobs = {
        k: getattr(opts, k)
        for k in ("workers", "concurrency", "index_delay", "index_batch", "broker_poll", "committer_nice")
    }
    knobs["smtp_processes"] = opts.smtp_processes
    log(f"capacity: {shape.title}; knobs {knobs}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    with smtp_sink(workdir) as (port, _):
        sink = run_smtp_source(port, shape, archiva.address)
    if sink.error:
        raise RuntimeError(f"smtp-sink run failed: {sink.error}")
    log(f"  smtp-sink, smtp-source:  {sink.rate:7.0f} msgs/s  ({sink.accepted} in {sink.elapsed:.1f} s)")

    pipeline = Pipeline(archiva, opts)
    counts = Counts(pipeline.data_dir / "archiva.sqlite3")
    try:
        pipeline.start()
        counts.start()
        cpu_before = pipeline.cpu()
        started = time.monotonic()
        sent = run_smtp_source(pipeline.port, shape, archiva.address)
        accepted_at = time.monotonic()
        if sent.error:
            raise RuntimeError(f"the ingest refused: {sent.error}")
        done_at = drain(pipeline, counts, sent.accepted, opts.drain_timeout)
        if done_at is None:
            raise RuntimeError(f"not archived and indexed within {opts.drain_timeout:.0f} s: {counts.latest()}")
        cpu = {name: used - cpu_before[name] for name, used in pipeline.cpu().items()}
        _, stored, archived, indexed, messages = counts.latest()
        print_timeline(counts, started)
        per_message = {name: round(1000 * used / sent.accepted, 2) for name, used in cpu.items()}
        log(f"  CPU ms per message:      {per_message}  (sum {sum(per_message.values()):.2f} ms)")
        log(f"  CPU-bound limit here:    {os.cpu_count() * 1000 / sum(per_message.values()):7.0f} msgs/s")
        end_to_end = sent.accepted / (done_at - started)
        log(f"  archiva ingest alone:    {sent.rate:7.0f} msgs/s accepted ({sent.elapsed:.1f} s)")
        log(
            f"  end to end:              {end_to_end:7.0f} msgs/s  (all {sent.accepted} archived and indexed "
            f"{done_at - started:.1f} s after the first send, {done_at - accepted_at:.1f} s after the last 250)"
        )
        ratio = end_to_end / sink.rate
        log(f"  ratio to smtp-sink:      {ratio:7.2f}  (goal >= 0.4)")
        sustained = sustain(pipeline, counts, archiva.address, opts) if opts.sustain_rate else {}
        if sustained:
            sustained["sustain_ratio"] = round(sustained["sustain_achieved"] / sink.rate, 3)
            log(
                f"  sustained ratio to smtp-sink: {sustained['sustain_ratio']:.2f}  "
                f"({'the backlog stayed flat' if sustained['sustain_flat'] else 'NOT sustained: the backlog grew'})"
            )
        latencies: list[float] = []
        if sustained:  # the latency is the idle pipeline's: let what the sustained phase left drain first
            _, stored_now, *_ = counts.latest()
            waiting_from = time.monotonic()
            drained_at = drain(pipeline, counts, stored_now, opts.drain_timeout)
            if drained_at is None:
                raise RuntimeError(f"the sustained phase's backlog did not drain in {opts.drain_timeout:.0f} s")
            log(f"  the sustained phase's backlog drained {drained_at - waiting_from:.1f} s after its last send")
        if opts.latency_messages:
            latencies = measure_latency(
                pipeline, archiva.address, archiva.tenant, opts.latency_messages, opts.latency_rate
            )
        counts.stop()
    finally:
        counts.stop()
        pipeline.stop()
    result = {
        "shape": shape.title,
        "knobs": knobs,
        "smtp_sink_rate": round(sink.rate, 1),
        "ingest_rate": round(sent.rate, 1),
        "end_to_end_rate": round(end_to_end, 1),
        "ratio": round(ratio, 3),
        "stored": stored,
        "archived": archived,
        "messages_indexed": indexed,
        "cpu_ms_per_message": per_message,
    } | sustained
    if latencies:
        missing = sum(1 for v in latencies if v == float("inf"))
        found = [v for v in latencies if v != float("inf")]
        result |= {
            "latency_p50": round(statistics.median(found), 3),
            "latency_p95": round(percentile(found, 0.95), 3),
            "latency_max": round(max(found), 3),
            "latency_not_found": missing,
        }
        log(
            f"  250 -> searchable at {opts.latency_rate:g}/s ({len(latencies)} messages): "
            f"p50 {result['latency_p50']:.2f} s  p95 {result['latency_p95']:.2f} s  max {result['latency_max']:.2f} s"
            f"  (goal p95 < 1 s){f'  NOT FOUND: {missing}' if missing else ''}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not Path(tool).exists():
            print(f"{tool} is missing: apt-get install -y postfix", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="archiva-capacity-"))
    try:
        result = run(opts, workdir)
    finally:
        if opts.keep:
            log(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["ratio"] >= 0.4 and result.get("latency_p95", 0) < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
