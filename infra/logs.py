"""Log hygiene: journal tokens are bearer secrets and never reach a log."""

from __future__ import annotations

import logging
import re
import time

TOKEN_RE = re.compile(r"(journal-\d{6})[0-9A-Za-z]{57}")


def redact(text: str) -> str:
    return TOKEN_RE.sub(r"\1…", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (ARCHIVA_LOG_FORMAT=json)."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)
