"""Prometheus metrics of the ingest, served on an internal port at /metrics."""

from __future__ import annotations

import bisect
import collections
import logging
import threading
from collections.abc import Iterator, Sized

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

REJECTED = Counter("archiva_smtp_rejections_total", "Refused deliveries by reason", ["reason"])
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LoopCounts:
    """What one event loop counts for every message, written by that loop's thread alone.

    A prometheus_client metric takes a lock (and checks its state) for every
    change, and an accepted message made nine of them; here each is an
    attribute of this object, which only its loop's thread writes, and
    `/metrics` adds up the objects of every loop of the process when it is
    scraped (`LoopCollector`).  Reading from the scraping thread needs no
    lock: each number is read whole, and the replies and buckets are copied
    in one step each.
    One per `smtp.Service`, i.e. per event loop; kept for the process's
    life, so a counter never goes back when a loop ends (a test's server).
    The two gauges are the sizes of the loop's own collections, read at
    scrape time: its open sessions, and its requests waiting for the committer.
    """

    def __init__(self, sessions: Sized = ()):
        self.sessions = sessions  # the loop's open SMTP sessions
        self.commit_queue: Sized = ()  # its messages handed to the committer, not yet answered
        self.accepted = 0
        self.accepted_bytes = 0
        self.replies: dict[tuple[str, str], int] = {}  # (command, code) -> count
        self.commit_buckets = [0] * (len(COMMIT_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.commit_seconds = 0.0

    def reply(self, command: str, reply: str) -> None:
        """A final reply to MAIL, RCPT or DATA."""
        key = (command, reply[:3])
        self.replies[key] = self.replies.get(key, 0) + 1

    def accepted_message(self, size: int, seconds: float) -> None:
        """A message answered 250, `seconds` after the end of its DATA."""
        self.accepted += 1
        self.accepted_bytes += size
        self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1
        self.commit_seconds += seconds


_loops: list[LoopCounts] = []
_loops_lock = threading.Lock()


def loop_counts(sessions: Sized = ()) -> LoopCounts:
    """A new LoopCounts for a loop with these sessions, served at /metrics from now on."""
    counts = LoopCounts(sessions)
    with _loops_lock:
        _loops.append(counts)
    return counts


class LoopCollector:
    """Serves the sum of every LoopCounts under the ingest's metric names."""

    def collect(self) -> Iterator[Metric]:
        with _loops_lock:
            loops = list(_loops)
        replies: collections.Counter[tuple[str, str]] = collections.Counter()
        buckets = [0] * (len(COMMIT_BUCKETS) + 1)
        for counts in loops:
            replies.update(dict(counts.replies))  # dict(): one step, however the loop goes on
            buckets = [total + count for total, count in zip(buckets, list(counts.commit_buckets), strict=True)]
        family = CounterMetricFamily(
            "archiva_smtp_replies", "Final replies to MAIL, RCPT and DATA", labels=["command", "code"]
        )
        for (command, code), count in sorted(replies.items()):
            family.add_metric([command, code], count)
        yield family
        yield CounterMetricFamily(
            "archiva_smtp_accepted_messages",
            "Messages made durable and answered 250",
            value=sum(counts.accepted for counts in loops),
        )
        yield CounterMetricFamily(
            "archiva_smtp_accepted_bytes",
            "Bytes of accepted messages",
            value=sum(counts.accepted_bytes for counts in loops),
        )
        cumulative = 0
        le = []
        for bound, count in zip([*COMMIT_BUCKETS, float("inf")], buckets, strict=True):
            cumulative += count
            le.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "archiva_smtp_commit_seconds",
            "From end of DATA to the final 250 (store + record)",
            buckets=le,
            sum_value=sum(counts.commit_seconds for counts in loops),
        )
        yield GaugeMetricFamily(
            "archiva_smtp_sessions", "Open SMTP sessions", value=sum(len(counts.sessions) for counts in loops)
        )
        yield GaugeMetricFamily(
            "archiva_smtp_commit_queue",
            "Messages handed to the committer, not yet stored and recorded",
            value=sum(len(counts.commit_queue) for counts in loops),
        )


REGISTRY.register(LoopCollector())


def serve_metrics(host: str, port: int) -> None:
    if port <= 0:
        return
    try:
        start_http_server(port, addr=host)
        log.info("ingest metrics on http://%s:%d/metrics", host, port)
    except OSError as exc:
        log.warning("cannot serve metrics on %s:%d: %s", host, port, exc)
