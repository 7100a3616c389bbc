"""Outgoing mail on the embedded default: one .eml file per message."""

from __future__ import annotations

import os
import uuid

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone


class OutboxBackend(BaseEmailBackend):
    """Writes each message to `$ARCHIVA_DATA_DIR/outbox/<time>-<id>.eml`."""

    def send_messages(self, email_messages):
        outbox = settings.ARCHIVA_OUTBOX_DIR
        outbox.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            name = f"{timezone.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.eml"
            tmp = outbox / f".{name}"
            tmp.write_bytes(message.message().as_bytes(linesep="\r\n"))
            os.replace(tmp, outbox / name)
            sent += 1
        return sent
