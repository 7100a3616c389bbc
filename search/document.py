"""The search document: what every backend indexes for one archived message.

Built by `archive` from a Message; backends must not need anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class SearchDocument:
    id: int  # archive.Message primary key
    tenant_id: int
    version: int  # bumps on every merge; a backend never replaces a newer version with an older one
    date: datetime  # aware; the message date, or the receive time when the message has none
    from_: list[str]  # addresses and display names ("alice@contoso.com", "Alice Example")
    to: list[str]  # header To + envelope To
    cc: list[str]
    bcc: list[str]  # header Bcc + envelope Bcc (journal reports only)
    recipients: list[str]  # every envelope recipient, incl. expansions and forwards
    subject: str
    body: str
    attachment_names: list[str]
    attachment_text: str
    has_attachment: bool
    size: int
    # Lower-cased addresses that make the message visible to a plain user:
    # sender, every header and envelope recipient.
    participants: list[str] = field(default_factory=list)
