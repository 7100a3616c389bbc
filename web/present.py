"""How a message is shown to a member: which recipients they may see.

Admins and auditors see everything.  A plain user sees a message because
they took part in it; they see its Bcc recipients only if they sent it (a
sender knows whom they blind-copied), else only their own Bcc entry: the
archive must not reveal more than the mailbox it stands in for.
"""

from __future__ import annotations

from typing import Any

from archive.models import Message
from archive.visibility import Recipients, recipients_for, sent_by

__all__ = ["Recipients", "as_json", "attachment_list", "recipients_for", "sent_by"]


def attachment_list(message: Message) -> list[dict[str, Any]]:
    return [
        {"name": a.get("name", ""), "content_type": a.get("content_type", ""), "size": a.get("size", 0)}
        for a in message.attachments
    ]


def as_json(message: Message, addresses: list[str] | None) -> dict[str, Any]:
    """One result of `/api/v1/messages` (keys are a contract: see DESIGN.md)."""
    recipients = recipients_for(message, addresses)
    return {
        "id": message.pk,
        "date": message.date.isoformat(),
        "from": message.from_display,
        "to": recipients.to,
        "cc": recipients.cc,
        "bcc": recipients.bcc,
        "subject": message.subject,
        "size": message.size,
        "attachments": attachment_list(message),
    }
