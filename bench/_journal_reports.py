"""Journal reports with a unique word, sent at a steady rate on one SMTP session.

Shared by bench/latency.py and bench/capacity.py, which both time each
report from its `250` to the word being found by the tenant's search.
"""

from __future__ import annotations

import smtplib
import threading
import time
import uuid


def report_message(marker: str, address: str) -> bytes:
    """An Exchange journal report to `address` whose message carries the word `marker`."""
    mid = f"<{uuid.uuid4()}@contoso.com>"
    original = (
        f"From: Alice <alice@contoso.com>\r\nTo: bob@fabrikam.com\r\nSubject: latency {marker}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: {mid}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob, the marker is {marker}.\r\n"
    )
    return (
        f"From: journal@contoso.com\r\nTo: {address}\r\nSubject: {marker}\r\nX-MS-Journal-Report:\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain\r\n\r\nSender: alice@contoso.com\r\nSubject: latency {marker}\r\n"
        f"Message-Id: {mid}\r\nTo: bob@fabrikam.com\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        f"{original}\r\n--b1--\r\n"
    ).encode()


def send_reports(
    client: smtplib.SMTP, address: str, count: int, rate: float, acked: dict[str, float], lock: threading.Lock
) -> None:
    """Send `count` reports at `rate` per second from now on `client` (greeted already);
    each accepted one's marker goes into `acked` with the moment its 250 arrived
    (under `lock`: the caller polls the search meanwhile)."""
    started = time.monotonic()
    for n in range(count):
        marker = f"m{n:05d}x{uuid.uuid4().hex[:8]}"
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        client.mail("ndr@contoso.com")
        client.rcpt(address)
        code, _ = client.data(report_message(marker, address))
        if code == 250:
            with lock:
                acked[marker] = time.monotonic()
