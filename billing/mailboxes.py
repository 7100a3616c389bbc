"""The billed number: internal mailboxes that sent or received archived mail in the last 30 days.

Internal means, when the tenant's Microsoft 365 mailbox list exists, a user
mailbox Graph lists (any of its addresses counts as that mailbox; shared,
room and equipment mailboxes are not billed); without it, an address in one
of the tenant's verified domains.  Sent: From, Sender (the journal's
envelope sender) and On-Behalf-Of.  Received: the journal report's envelope
recipients, which Exchange lists after expanding groups (so a distribution
list's address is not a mailbox), the header To/Cc/Bcc only for mail without
an envelope, and the mailboxes holding a copy.  "Last 30 days" goes by the
message's date, so a historical import does not bill old mailboxes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from archive import access as archive_access
from archive.models import Message
from m365 import access as m365_access
from m365.models import MailboxKind
from tenants import access as tenant_access
from tenants.models import Tenant

WINDOW = dt.timedelta(days=30)
CHUNK = 2000


@dataclass
class ActiveMailbox:
    address: str
    sent: int = 0
    received: int = 0
    last: dt.datetime | None = None

    def saw(self, when: dt.datetime, *, sent: bool) -> None:
        if sent:
            self.sent += 1
        else:
            self.received += 1
        if self.last is None or when > self.last:
            self.last = when


@dataclass
class Directory:
    """Which addresses are billable mailboxes, and under which (primary) address."""

    source: str  # "microsoft365" or "domains"
    primary: dict[str, str] = field(default_factory=dict)  # any address -> primary (microsoft365)
    excluded: set[str] = field(default_factory=set)  # shared/resource addresses (microsoft365)
    domains: set[str] = field(default_factory=set)  # verified domains (domains)

    def mailbox_of(self, address: str) -> str | None:
        address = address.strip().lower()
        if self.source == "microsoft365":
            return self.primary.get(address)
        domain = address.rpartition("@")[2]
        return address if "@" in address and domain in self.domains else None


def directory(tenant: Tenant) -> Directory:
    listed = list(m365_access.mailboxes(tenant).filter(has_mailbox=True))
    if not listed:
        return Directory("domains", domains={d.name for d in tenant_access.verified_domains(tenant)})
    found = Directory("microsoft365")
    for mailbox in listed:
        addresses = {a.lower() for a in [mailbox.primary_address, *mailbox.proxy_addresses] if a}
        if mailbox.kind == MailboxKind.USER:
            primary = (mailbox.primary_address or mailbox.user_principal_name).lower()
            found.primary.update(dict.fromkeys(addresses, primary))
        else:
            found.excluded |= addresses
    for address in found.excluded:
        found.primary.pop(address, None)
    return found


def _address(value: str) -> str:
    value = (value or "").strip().lower()
    if "<" in value and ">" in value:
        value = value[value.index("<") + 1 : value.rindex(">")]
    return value


def _sides(row: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    sent = {_address(a) for a in [*row["from_addresses"], row["envelope_sender"], row["on_behalf_of"]]}
    envelope = [r.get("address", "") for r in row["envelope_recipients"] if isinstance(r, dict)]
    received = {_address(a) for a in envelope or [*row["to"], *row["cc"], *row["bcc"]]}
    received |= {_address(a) for a in row["mailboxes"]}
    return sent - {""}, received - {""}


def count_rows(rows: Iterable[Mapping[str, Any]], found: Directory) -> dict[str, ActiveMailbox]:
    active: dict[str, ActiveMailbox] = {}
    for row in rows:
        sent, received = _sides(row)
        for addresses, is_sent in ((sent, True), (received - sent, False)):
            for mailbox in {m for m in map(found.mailbox_of, addresses) if m}:
                active.setdefault(mailbox, ActiveMailbox(mailbox)).saw(row["date"], sent=is_sent)
    return active


@dataclass
class MailboxCount:
    source: str  # "microsoft365" or "domains": what decided which addresses are mailboxes
    mailboxes: list[ActiveMailbox]

    def __len__(self) -> int:
        return len(self.mailboxes)


def count(tenant: Tenant, now: dt.datetime) -> MailboxCount:
    """The billable mailboxes of the last 30 days before `now`, by address."""
    rows = (
        archive_access.messages(tenant)
        .filter(kind=Message.Kind.MAIL, date__gte=now - WINDOW, date__lte=now + dt.timedelta(days=1))
        .values(
            "from_addresses",
            "envelope_sender",
            "on_behalf_of",
            "envelope_recipients",
            "to",
            "cc",
            "bcc",
            "mailboxes",
            "date",
        )
        .iterator(chunk_size=CHUNK)
    )
    found = directory(tenant)
    active = count_rows(rows, found)
    return MailboxCount(found.source, sorted(active.values(), key=lambda m: m.address))


def active_mailboxes(tenant: Tenant, now: dt.datetime) -> list[ActiveMailbox]:
    return count(tenant, now).mailboxes
