"""The search document: what every backend indexes for one archived message.

Built by `archive` from a Message; backends must not need anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Recipient fields whose entries a plain user may match only in mail they sent:
# an address not written in the message's own From/To/Cc headers (a Bcc, a
# group's expanded members, a forward's target) is known from the journal
# envelope alone, which the recipients never saw. Backends index these
# entries apart, under `hidden_field(name)`; search.backends.base decides per
# scope whether a query may look there.
HIDDEN_CAPABLE = ("to", "cc", "bcc", "recipients")


def hidden_field(name: str) -> str:
    return f"hidden_{name}"


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
    # Lower-cased addresses written in the message's own From, To and Cc
    # headers, which every recipient can read. Any other address of to, cc
    # and recipients, and every Bcc, is hidden from plain users who did not
    # send the message. None: taken from from_, to and cc.
    header_addresses: list[str] | None = None
    # "mail", "event" or "contact" (archive.models.Message.Kind).
    kind: str = "mail"
    # Where the item is filed: "mailbox/folder path", lower-cased, one per
    # mailbox copy (archive.items.folders_of). Backends index `folder_terms`.
    folders: list[str] = field(default_factory=list)


def folder_terms(folders: list[str]) -> tuple[list[str], list[str]]:
    """What backends index for `folder:` (search.query.InFolder): every folder
    and each of its ancestors, as paths ("inbox", "inbox/projects") and as
    mailbox paths ("anna@contoso.com/inbox", …).  A term query on a path
    then matches the folder and everything below it, in every backend alike."""
    paths: dict[str, None] = {}
    mailbox_paths: dict[str, None] = {}
    for value in folders:
        mailbox, _, path = value.lower().partition("/")
        levels = [level for level in path.split("/") if level]
        for depth in range(1, len(levels) + 1):
            prefix = "/".join(levels[:depth])
            paths[prefix] = None
            mailbox_paths[f"{mailbox}/{prefix}"] = None
    return list(paths), list(mailbox_paths)
