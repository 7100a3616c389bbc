"""Log hygiene: journal tokens are bearer secrets and never reach a log."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import TextIO

TOKEN_RE = re.compile(r"(journal-\d{6})[0-9A-Za-z]{57}")


def redact(text: str) -> str:
    if "journal-" not in text:  # TOKEN_RE cannot match without it; most lines have none
        return text
    return TOKEN_RE.sub(r"\1…", text)


def cheap_records() -> None:
    """Leave out of every LogRecord of this process what no formatter of ours
    prints: the caller's file and line (a walk up the stack) and the
    multiprocessing process name.  The logging HOWTO's "Optimization"
    section documents these switches.  For the ingest, which makes a record
    for every accepted message (with the filter's single formatting and the
    plain formatter's cached time, half the cost of a line); other processes keep
    the caller for their tracebacks and test output."""
    logging._srcfile = None
    logging.logMultiprocessing = False


class RedactTokens(logging.Filter):
    """Formats the message once, redacted: the formatter then finds it ready."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger message`, the whole line redacted (a traceback or
    stack another formatter cached on the record included); the time's
    seconds are formatted once per second, not once per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._stamp = (-1, "")  # (second, its text): read and replaced whole, never half of each

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second, text = self._stamp
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._stamp = (second, text)
        return f"{text},{int(record.msecs):03d}"


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (ARCHIVA_LOG_FORMAT=json); the whole line redacted."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(entry, ensure_ascii=False))


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """Standard error, written in blocks when it is not a terminal.

    A busy ingest logs a line for every accepted message; a write(2) for
    each line to a log file took a fifth of an ingest process's throughput
    (bench/README.md).  Here WARNING and above are
    written at once, lower levels at least every `interval` seconds and at
    exit; a process killed with -9 may lose its last `interval` of INFO
    lines (what was accepted is recorded in the database, not in the log).
    On a terminal every line is written at once.
    """

    def __init__(self, interval: float = 0.5):
        fd = sys.stderr.fileno()
        buffered = not os.isatty(fd)
        super().__init__(open(os.dup(fd), "w", buffering=1 << 16 if buffered else 1, errors="backslashreplace"))
        self.interval = interval if buffered else 0.0
        self._flushed = time.monotonic()
        self._flusher_pid = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            now = time.monotonic()
            if record.levelno >= logging.WARNING or now - self._flushed >= self.interval:
                self.stream.flush()
                self._flushed = now
            elif self._flusher_pid != os.getpid():  # none yet in this process (or forked): start one
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_now_and_then, name="log-flush", daemon=True).start()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _flush_now_and_then(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()
