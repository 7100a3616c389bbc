"""An import upload of several GB, streamed through the real web server (issue 19).

    .venv/bin/python bench/import_upload.py               # 3 GB: about 5-10 min and 7 GB of disk on 2 cores
    .venv/bin/python bench/import_upload.py --gb 0.5      # quicker

Starts the web role as `make run` does (gunicorn, gthread, the embedded
default on a fresh data folder), makes an owner with an API token, and
streams one mbox of --gb gigabytes (messages of about 256 KB, generated as
they are sent: the client holds none of it) to `POST /api/v1/imports` over
one HTTP connection.  While it flows, the gunicorn processes' resident
memory is sampled: an upload held in memory would grow them by the file's
size.  Then the import runs as the worker runs it (`run_import`), and its
counts are checked: every message stored, none in error.

Baseline in the same run: writing the same bytes to a file in the same
spool folder (the disk's own speed); the upload's ratio to it is printed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MESSAGE_BYTES = 256 * 1024
CHUNK = 1024 * 1024
BOUNDARY = "archiva-bench-boundary-7f3a"


def message(n: int) -> bytes:
    head = (
        f"From bench@northwind.example Tue Feb  4 10:00:00 2020\n"
        f"From: sender{n % 97}@northwind.example\nTo: erin@contoso.com\nSubject: Upload {n}\n"
        f"Date: Tue, 04 Feb 2020 10:00:00 +0000\nMessage-ID: <upload-{n}@northwind.example>\n\n"
    ).encode()
    line = f"line of message {n} that takes some room in the upload, as mail does {n:>12}\n".encode()
    body = line * ((MESSAGE_BYTES - len(head)) // len(line))
    return head + body + b"\n"


def mbox(total: int) -> Iterator[bytes]:
    """Messages until `total` bytes are reached (the last one whole)."""
    sent, n, pending = 0, 0, bytearray()
    while sent + len(pending) < total:
        pending += message(n)
        n += 1
        if len(pending) >= CHUNK:
            sent += len(pending)
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def count_messages(total: int) -> tuple[int, int]:
    size = count = 0
    for piece in mbox(total):
        size += len(piece)
        count += piece.count(b"From bench@northwind.example Tue Feb")  # whole messages in each piece
    return count, size


def multipart(total: int) -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.mbox"\r\n'
        f"Content-Type: application/mbox\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def rss_of_tree(pid: int) -> int:
    """Resident bytes of a process and its children (gunicorn's arbiter and workers)."""
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=3.0)
    opts = parser.parse_args()
    total = int(opts.gb * 1024**3)

    data = Path(tempfile.mkdtemp(prefix="archiva-upload-bench-"))
    env = dict(os.environ)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT", "ARCHIVA_SEARCH_URL"):
        env.pop(name, None)
    port = free_port()
    env.update(
        ARCHIVA_DATA_DIR=str(data),
        DJANGO_SETTINGS_MODULE="archiva.settings",
        ARCHIVA_LOG_LEVEL="warning",
    )
    os.environ.clear()
    os.environ.update(env)
    web = None
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from django.conf import settings

        from compliance.imports import run_import
        from compliance.models_export import Import
        from tenants.access import membership_for
        from tenants.actions import create_tenant
        from tenants.api_tokens import create_api_token
        from tenants.models import User

        owner = User.objects.create_user(email="owner@contoso.com", password=None)
        create_tenant("Bench", owner)
        _token, secret = create_api_token(membership_for(owner), "bench")
        expected, size = count_messages(total)
        print(f"bench/import_upload.py: one mbox of {size / 1e9:.2f} GB ({expected:,} messages of ~256 KB)")

        spool = Path(settings.ARCHIVA_SPOOL_DIR)
        spool.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with (spool / "baseline").open("wb") as out:
            for piece in mbox(total):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        disk_rate = size / (time.perf_counter() - started)
        (spool / "baseline").unlink()
        print(f"  baseline: the same bytes written to the spool      {disk_rate / 1e6:8.1f} MB/s")

        web = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "archiva.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--no-control-socket"],
            cwd=ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        time.sleep(2)  # the workers import the application
        peak = [rss_of_tree(web.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], rss_of_tree(web.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def upload(length: int) -> tuple[float, int, str]:
            head, tail = multipart(length)
            pieces = list(mbox(length)) if length < CHUNK else None
            body_size = sum(map(len, pieces)) if pieces is not None else size
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            began = time.perf_counter()
            connection.putrequest("POST", "/api/v1/imports")
            connection.putheader("Authorization", f"Bearer {secret}")
            connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
            connection.putheader("Content-Length", str(len(head) + body_size + len(tail)))
            connection.endheaders()
            connection.send(head)
            for piece in pieces if pieces is not None else mbox(length):
                connection.send(piece)
            connection.send(tail)
            response = connection.getresponse()
            text = response.read().decode()
            connection.close()
            return time.perf_counter() - began, response.status, text

        # Warm up both workers (imports, first request) with a one-message upload each.
        for _ in range(2):
            _, status, text = upload(1)
            if status != 201:
                raise SystemExit(f"warm-up upload refused: {status} {text[:300]}")
        time.sleep(1)
        idle = peak[0] = rss_of_tree(web.pid)
        upload_seconds, status, body = upload(total)
        stop.set()
        sampler.join()
        if status != 201:
            raise SystemExit(f"upload refused: {status} {body[:300]}")
        print(f"  upload through gunicorn (HTTP, one connection)     {size / upload_seconds / 1e6:8.1f} MB/s")
        print(f"  ratio to the disk's own speed                      {size / upload_seconds / disk_rate:8.2f}")
        print(
            f"  web processes' memory: {idle / 1e6:.0f} MB idle, {peak[0] / 1e6:.0f} MB at most during the upload"
            f" (+{(peak[0] - idle) / 1e6:.0f} MB for a {size / 1e9:.2f} GB file)"
        )

        started_import = Import.objects.get(size=size)
        began = time.perf_counter()
        run_import(started_import.pk)
        done = Import.objects.get(pk=started_import.pk)
        seconds = time.perf_counter() - began
        print(
            f"  import (read, store through the durable path)      {done.done / seconds:8.0f} msgs/s"
            f"  ({done.stored:,} stored, {done.error_count} errors, {done.position:,} of {done.extent:,} bytes read)"
        )
        if (done.done, done.stored, done.error_count) != (expected, expected, 0):
            raise SystemExit(
                f"FAILED: expected {expected} messages stored, got {done.done}/{done.stored}/{done.errors}"
            )
    finally:
        if web is not None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
