"""Log hygiene: journal tokens are bearer secrets and never reach a log."""

from __future__ import annotations

import logging
import re

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
