"""The Microsoft fake (tests/ms_fake.py) as a process of its own, filled with mailboxes, for bench/m365_import.py.

    _ms_fake_server.py --directory ID --client ID --cert PEM --mailboxes 10 --messages 300 --large 2 --out info.json

Serves until stdin closes.  Writes {"url", "ca_path", "users": [{"id", "upn", "messages"}]} to --out once ready.
In a process of its own so that the fake's work does not share the importer's interpreter lock.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import random
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ms_fake import MicrosoftFake  # noqa: E402
from tests.ms_support import ALL_ROLES  # noqa: E402

WORDS = "invoice quarterly budget meeting contract renewal pricing forecast shipment audit travel hiring".split()
FOLDERS = ["Inbox", "Inbox/Projects", "Inbox/Projects/Q3", "Sent Items", "Archive/2025", "Archive/2026"]


def message(n: int, upn: str, rng: random.Random, large: bool) -> bytes:
    subject = " ".join(rng.sample(WORDS, 3)) + f" #{n}"
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 1200))) + f"\r\nCodeword bench{n}.\r\n"
    head = (
        f"From: Alice <alice{rng.randint(1, 200)}@contoso.com>\r\nTo: {upn}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: <{uuid.uuid4()}@contoso.com>\r\nMIME-Version: 1.0\r\n"
    )
    if not large:
        return (head + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()
    # A 2 MB attachment, as large mail usually is: spooled to a file on our side, so memory stays bounded.
    payload = base64.encodebytes(rng.randbytes(2 * 1024 * 1024)).decode().replace("\n", "\r\n")
    return (
        head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
        f'--b1\r\nContent-Type: application/zip; name="figures-{n}.zip"\r\nContent-Transfer-Encoding: base64\r\n'
        f'Content-Disposition: attachment; filename="figures-{n}.zip"\r\n\r\n{payload}--b1--\r\n'
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--directory", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300, help="per mailbox")
    parser.add_argument("--large", type=int, default=2, help="messages of 2 MB per mailbox")
    parser.add_argument("--out", required=True, type=Path)
    opts = parser.parse_args()

    fake = MicrosoftFake().start()
    fake.add_tenant(opts.directory, "Bench Ltd", domains=[("contoso.com", True)])
    fake.register_app(opts.directory, opts.client, roles=set(ALL_ROLES))
    fake.upload_certificate(opts.client, opts.cert.read_text())
    rng = random.Random(7)
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    users = []
    n = 0
    for i in range(opts.mailboxes):
        upn = f"user{i}@contoso.com"
        user = fake.add_user(opts.directory, upn)
        for j in range(opts.messages):
            large = j < opts.large
            fake.add_message(
                user, FOLDERS[j % len(FOLDERS)], message(n, upn, rng, large), base + dt.timedelta(minutes=n)
            )
            n += 1
        users.append({"id": user.id, "upn": upn, "messages": opts.messages})
    fake.requests.clear()
    opts.out.write_text(json.dumps({"url": fake.url, "ca_path": str(fake.ca_path), "users": users}))
    try:
        sys.stdin.read()  # until the bench closes our stdin (or dies)
    finally:
        print(json.dumps({"max_concurrency": max(fake.max_concurrency(u["id"]) for u in users)}), flush=True)
        fake.stop()


if __name__ == "__main__":
    main()
