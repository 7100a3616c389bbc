"""Prometheus metrics of the ingest, served on an internal port at /metrics."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REPLIES = Counter("archiva_smtp_replies_total", "Final replies to MAIL, RCPT and DATA", ["command", "code"])
ACCEPTED = Counter("archiva_smtp_accepted_messages_total", "Messages made durable and answered 250")
ACCEPTED_BYTES = Counter("archiva_smtp_accepted_bytes_total", "Bytes of accepted messages")
REJECTED = Counter("archiva_smtp_rejections_total", "Refused deliveries by reason", ["reason"])
COMMIT_SECONDS = Histogram(
    "archiva_smtp_commit_seconds",
    "From end of DATA to the final 250 (store + record)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SESSIONS = Gauge("archiva_smtp_sessions", "Open SMTP sessions")
COMMIT_QUEUE = Gauge("archiva_smtp_commit_queue", "Messages handed to the committer, not yet stored and recorded")


_replies: dict[tuple[str, str], Counter] = {}


def count_reply(command: str, reply: str) -> None:
    """REPLIES for this command and the reply's code; the labelled child is
    looked up once (`labels()` takes a lock and builds a key on every call)."""
    key = (command, reply[:3])
    child = _replies.get(key)
    if child is None:
        child = _replies[key] = REPLIES.labels(*key)
    child.inc()


def serve_metrics(host: str, port: int) -> None:
    if port <= 0:
        return
    try:
        start_http_server(port, addr=host)
        log.info("ingest metrics on http://%s:%d/metrics", host, port)
    except OSError as exc:
        log.warning("cannot serve metrics on %s:%d: %s", host, port, exc)
