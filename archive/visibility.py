"""Which recipients of a message a member may see (README, who sees what).

Admins and auditors see everything.  A plain user sees a message because
they took part in it; they see its Bcc recipients only if they sent it (a
sender knows whom they blind-copied), else only their own Bcc entry: the
archive must not reveal more than the mailbox it stands in for.  The
message page, the API and exports (their manifests) all go by this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archive.models import Message


@dataclass(frozen=True)
class Recipients:
    to: list[str]
    cc: list[str]
    bcc: list[str]
    envelope: list[dict[str, Any]]


def sent_by(message: Message, addresses: list[str]) -> bool:
    senders = {*message.from_addresses, message.envelope_sender, message.on_behalf_of}
    return not senders.isdisjoint(addresses)


def recipients_for(message: Message, addresses: list[str] | None) -> Recipients:
    """Header and envelope recipients by kind (To, Cc, Bcc), as this member may see them.

    A plain user who did not send the message sees what its headers say
    (From, To, Cc) and their own envelope entries: never another recipient
    known only from the journal envelope (a Bcc, a group's expanded members,
    a forward's target), as search does not match them either.
    """
    envelope = list(message.envelope_recipients)
    if addresses is not None and not sent_by(message, addresses):
        shown = {*message.from_addresses, *message.to, *message.cc, *addresses}
        envelope = [_visible_entry(r, shown) for r in envelope if r.get("address") in shown]
        envelope = [r for r in envelope if r.get("kind") != "bcc" or r.get("address") in addresses]
    header_bcc = message.bcc if addresses is None or sent_by(message, addresses) else []

    def union(header: list[str], kind: str) -> list[str]:
        return list(dict.fromkeys([*header, *(r["address"] for r in envelope if r.get("kind") == kind)]))

    bcc = union(header_bcc, "bcc")
    if addresses is not None and not sent_by(message, addresses):
        bcc = [a for a in bcc if a in addresses]
    return Recipients(to=union(message.to, "to"), cc=union(message.cc, "cc"), bcc=bcc, envelope=envelope)


def _visible_entry(recipient: dict[str, Any], shown: set[str]) -> dict[str, Any]:
    """An envelope entry without the group or forwarder it names when that one is hidden too."""
    return {
        **recipient,
        "expanded": recipient.get("expanded") if recipient.get("expanded") in shown else None,
        "forwarded": recipient.get("forwarded") if recipient.get("forwarded") in shown else None,
    }


def visible_recipients(message: Message, addresses: list[str] | None) -> list[str]:
    """To, Cc and Bcc as this member may see them, in that order, once each."""
    shown = recipients_for(message, addresses)
    return list(dict.fromkeys([*shown.to, *shown.cc, *shown.bcc]))
