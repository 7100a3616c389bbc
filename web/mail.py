"""Links in outgoing mail, and the embedded default's outbox: one .eml file per message."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone


def site_url(path: str) -> str:
    """An absolute link for a mail: SITE_ROOT and the path, never the request's
    Host header (a forged one would mail the recipient a link to its own site)."""
    if not path.startswith("/"):
        raise ValueError(f"site_url needs a path, got {path!r}")
    return settings.SITE_ROOT + path


def rebased(url: str) -> str:
    """The same path, query and fragment, on SITE_ROOT (for links a library built from the request)."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return site_url((parts.path or "/") + query + fragment)


class OutboxBackend(BaseEmailBackend):
    """Writes each message to `$ARCHIVA_DATA_DIR/outbox/<time>-<id>.eml`."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        outbox = settings.ARCHIVA_OUTBOX_DIR
        outbox.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            name = f"{timezone.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.eml"
            tmp = outbox / f".{name}"
            tmp.write_bytes(message.message().as_bytes(linesep="\r\n"))  # type: ignore[call-arg]  # Django 5.2's SafeMIME takes linesep; the stubs are Django 6's
            os.replace(tmp, outbox / name)
            sent += 1
        return sent
