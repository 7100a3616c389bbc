"""Delivering held postmaster mail (ingest.held) to the operator.

`ARCHIVA_POSTMASTER` set: forwarded there through Django's mail backend,
the message attached as received.  Unset (the embedded default): written as
received, after a few trace lines, to the outbox folder where the outbox
mail backend writes its .eml files.  A delivered message is marked
released and its held copy deleted; one that fails keeps its error and is
tried again by the periodic task.
"""

from __future__ import annotations

import logging
import os

from django.conf import settings
from django.utils import timezone

from ingest.held import HeldMessage, delete_unreferenced

log = logging.getLogger(__name__)


def deliver_many(ids: list[int]) -> int:
    """Deliver these held postmaster messages, each once (a task may run twice); how many were delivered."""
    delivered = 0
    for message in HeldMessage.objects.filter(
        pk__in=ids, kind=HeldMessage.Kind.POSTMASTER, released_at__isnull=True
    ).order_by("pk"):
        try:
            deliver_postmaster(message)
            delivered += 1
        except Exception as exc:
            log.warning("could not deliver postmaster message %s: %s", message.queue_id, exc)
            HeldMessage.objects.filter(pk=message.pk).update(error=str(exc)[:1000])
    delete_unreferenced(
        HeldMessage.objects.filter(pk__in=ids, released_at__isnull=False).values_list("storage_key", flat=True)
    )
    return delivered


def deliver_postmaster(message: HeldMessage) -> None:
    """Hand a postmaster message to the operator: ARCHIVA_POSTMASTER, else the outbox folder."""
    raw = message.read()
    if settings.ARCHIVA_POSTMASTER:
        _forward(message, raw, settings.ARCHIVA_POSTMASTER)
    else:
        _to_outbox(message, raw)
    HeldMessage.objects.filter(pk=message.pk, released_at__isnull=True).update(released_at=timezone.now(), error="")


def _trace(message: HeldMessage) -> bytes:
    """Where it came from, as header lines before the message (the envelope is not in its headers)."""
    peer = message.peer_ip or "unknown"
    return (
        f"Return-Path: <{message.mail_from}>\r\n"
        f"X-Archiva-Original-To: {', '.join(message.rcpt_to)}\r\n"
        f"X-Archiva-Received: from {message.helo or 'unknown'} ([{peer}]) queue id {message.queue_id}\r\n"
    ).encode("utf-8", "replace")


def _to_outbox(message: HeldMessage, raw: bytes) -> None:
    outbox = settings.ARCHIVA_OUTBOX_DIR
    outbox.mkdir(parents=True, exist_ok=True)
    name = f"{message.received_at:%Y%m%dT%H%M%S}-postmaster-{message.queue_id}.eml"
    tmp = outbox / f".{name}"
    tmp.write_bytes(_trace(message) + raw)
    os.replace(tmp, outbox / name)  # the same name if it runs twice: one file


def _forward(message: HeldMessage, raw: bytes, address: str) -> None:
    from email import message_from_bytes

    from django.core.mail import EmailMessage

    email = EmailMessage(
        subject=f"Mail to postmaster from {message.mail_from or '<>'}",
        body=(
            f"The SMTP ingest accepted this message for postmaster at {message.received_at:%Y-%m-%d %H:%M:%S} UTC "
            f"from {message.peer_ip or 'unknown'} (queue id {message.queue_id}). It is attached as received."
        ),
        to=[address],
    )
    email.attach(content=message_from_bytes(_trace(message) + raw), mimetype="message/rfc822")
    email.send()
