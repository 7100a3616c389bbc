"""Calendar events and contacts from Graph, as the archive keeps them:
iCalendar (RFC 5545) and vCard 4.0 (RFC 6350) bytes.

Graph has no `$value` for events or contacts, so the bytes are written here
from Graph's JSON: the properties the archive's search uses (summary,
organizer, attendees, start/end, location, description; name, emails,
phones, company) plus the Graph ids that make an item the same item.  The
output is deterministic (same JSON, same bytes), so re-reading an unchanged
item stores nothing new (`store_items` is idempotent per content hash).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from archive import access as archive_access
from archive.items import Item, Kind, record_deletion, store_items
from archive.parser.htmltext import html_to_text
from m365.graph import Graph, GraphError
from m365.sync import ItemWatermark, Subscription

log = logging.getLogger(__name__)

PRODID = "-//Archiva Cloud//Microsoft 365 sync//EN"
_GRAPH_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})")


def _escape(value: str) -> str:
    """TEXT escaping shared by iCalendar and vCard (RFC 5545 3.3.11, RFC 6350 3.4)."""
    return (
        value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\r\n", "\n").replace("\n", "\\n")
    )


def _param(value: str) -> str:
    """A parameter value: quoted, without the characters a quoted value cannot hold."""
    return '"' + re.sub(r'["\r\n\x00-\x1f]', "", value) + '"'


def _fold(line: str) -> bytes:
    """A content line folded at 75 octets, never inside a UTF-8 sequence."""
    data = line.encode()
    out = bytearray()
    limit = 75
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte: back up to the character's start
            cut -= 1
        out += data[:cut] + b"\r\n "
        data = data[cut:]
        limit = 74  # the leading space counts
    return bytes(out + data + b"\r\n")


def _lines(lines: Iterable[str]) -> bytes:
    return b"".join(_fold(line) for line in lines if line)


def _text(obj: Any, *keys: str) -> str:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj.strip() if isinstance(obj, str) else ""


def _body(event: dict[str, Any]) -> str:
    content = _text(event, "body", "content")
    if _text(event, "body", "contentType").lower() == "html":
        return html_to_text(content).strip()
    return content


def _when(value: Any, all_day: bool) -> str:
    """`;VALUE=DATE:20261206`, `:20261206T100000Z` (UTC) or `;TZID="…":20261206T100000`."""
    if not isinstance(value, dict):
        return ""
    match = _GRAPH_DATETIME.match(str(value.get("dateTime") or ""))
    if not match:
        return ""
    y, mo, d, h, mi, s = match.groups()
    if all_day:
        return f";VALUE=DATE:{y}{mo}{d}"
    zone = str(value.get("timeZone") or "UTC")
    if zone.upper() in ("UTC", "ETC/UTC", "Z"):
        return f":{y}{mo}{d}T{h}{mi}{s}Z"
    return f";TZID={_param(zone)}:{y}{mo}{d}T{h}{mi}{s}"


def _stamp(value: str) -> str:
    """Graph's `lastModifiedDateTime` as an iCalendar UTC time (no wall clock: the bytes stay deterministic)."""
    match = _GRAPH_DATETIME.match(value)
    if not match:
        return "19700101T000000Z"
    return "{}{}{}T{}{}{}Z".format(*match.groups())


def _person(entry: Any) -> tuple[str, str]:
    return _text(entry, "emailAddress", "name"), _text(entry, "emailAddress", "address").lower()


def event_ics(event: dict[str, Any]) -> bytes:
    """One Graph event as an iCalendar object with one VEVENT."""
    all_day = bool(event.get("isAllDay"))
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "BEGIN:VEVENT"]
    lines.append(f"UID:{_escape(_text(event, 'iCalUId') or _text(event, 'id'))}")
    lines.append(f"DTSTAMP:{_stamp(_text(event, 'lastModifiedDateTime'))}")
    if start := _when(event.get("start"), all_day):
        lines.append(f"DTSTART{start}")
    if end := _when(event.get("end"), all_day):
        lines.append(f"DTEND{end}")
    lines.append(f"SUMMARY:{_escape(_text(event, 'subject'))}")
    if location := _text(event, "location", "displayName"):
        lines.append(f"LOCATION:{_escape(location)}")
    name, address = _person(event.get("organizer"))
    if address:
        lines.append(f"ORGANIZER{f';CN={_param(name)}' if name else ''}:mailto:{address}")
    for attendee in event.get("attendees") or []:
        name, address = _person(attendee)
        if not address:
            continue
        role = "OPT-PARTICIPANT" if _text(attendee, "type") == "optional" else "REQ-PARTICIPANT"
        cn = f";CN={_param(name)}" if name else ""
        lines.append(f"ATTENDEE;ROLE={role}{cn}:mailto:{address}")
    if description := _body(event):
        lines.append(f"DESCRIPTION:{_escape(description)}")
    if categories := [c for c in event.get("categories") or [] if isinstance(c, str) and c]:
        lines.append("CATEGORIES:" + ",".join(_escape(c) for c in categories))
    lines.append(f"X-MS-GRAPH-ID:{_escape(_text(event, 'id'))}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return _lines(lines)


def contact_vcf(contact: dict[str, Any]) -> bytes:
    """One Graph contact as a vCard 4.0."""
    given, surname = _text(contact, "givenName"), _text(contact, "surname")
    full = _text(contact, "displayName") or " ".join(p for p in (given, surname) if p)
    lines = ["BEGIN:VCARD", "VERSION:4.0", f"PRODID:{PRODID}", f"UID:{_escape(_text(contact, 'id'))}"]
    lines.append(f"FN:{_escape(full)}")
    lines.append(f"N:{_escape(surname)};{_escape(given)};{_escape(_text(contact, 'middleName'))};;")
    for entry in contact.get("emailAddresses") or []:
        if address := _text(entry, "address"):
            lines.append(f"EMAIL:{_escape(address)}")
    phones = [("work", p) for p in contact.get("businessPhones") or []]
    phones += [("home", p) for p in contact.get("homePhones") or []]
    phones += [("cell", contact.get("mobilePhone"))]
    for kind, number in phones:
        if isinstance(number, str) and number.strip():
            lines.append(f"TEL;TYPE={kind}:{_escape(number.strip())}")
    if company := _text(contact, "companyName"):
        department = _text(contact, "department")
        lines.append(f"ORG:{_escape(company)}{';' + _escape(department) if department else ''}")
    if title := _text(contact, "jobTitle"):
        lines.append(f"TITLE:{_escape(title)}")
    if note := _text(contact, "personalNotes"):
        lines.append(f"NOTE:{_escape(note)}")
    if modified := _text(contact, "lastModifiedDateTime"):
        lines.append(f"REV:{_stamp(modified)}")
    lines.append("END:VCARD")
    return _lines(lines)


def graph_datetime(value: Any) -> datetime | None:
    """Graph's UTC timestamps (`2026-12-06T10:00:00Z`, up to 7 fractional digits)."""
    match = _GRAPH_DATETIME.match(value) if isinstance(value, str) else None
    if not match:
        return None
    y, mo, d, h, mi, s = (int(g) for g in match.groups())
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# --- reading them from Graph -------------------------------------------------------

# (kind, Graph collection under /users/{id}, folder shown in the archive, writer)
SOURCES: tuple[tuple[Kind, str, str, Callable[[dict[str, Any]], bytes]], ...] = (
    ("event", "events", "Calendar", event_ics),
    ("contact", "contacts", "Contacts", contact_vcf),
)
PAGE = 100


def sync_items(graph: Graph, subscription: Subscription) -> int:
    """Archive the mailbox's events and contacts changed since the last run
    (all of them the first time), and record as deleted those archived that
    the mailbox no longer lists; returns how many were stored or checked."""
    total = 0
    for source in SOURCES:
        try:
            total += _sync_kind(graph, subscription, *source)
        except GraphError as exc:
            if exc.status != 403:
                raise
            # Calendars.Read or Contacts.Read not granted: the connection page names
            # the missing permission; the other kind still syncs.
            log.warning("%ss of %s not readable: %s", source[0], subscription.mailbox, exc)
    return total


def _sync_kind(
    graph: Graph,
    subscription: Subscription,
    kind: Kind,
    collection: str,
    folder: str,
    writer: Callable[[dict[str, Any]], bytes],
) -> int:
    mark = ItemWatermark.objects.filter(tenant=subscription.tenant, user_id=subscription.user_id, kind=kind).first()
    since = mark.modified_until if mark else None
    newest = since
    listed: set[str] = set()
    total = 0
    # The whole collection is listed every time (the JSON only, no bytes are
    # written for what did not change): that is how deletions are seen.
    for page in graph.pages(f"/users/{subscription.user_id}/{collection}", {"$top": str(PAGE)}):
        batch: list[Item] = []
        for entry in page.get("value", []):
            if not isinstance(entry.get("id"), str):
                continue
            listed.add(entry["id"])
            modified = graph_datetime(entry.get("lastModifiedDateTime"))
            if since and modified and modified < since:
                continue
            newest = max(filter(None, (newest, modified)), default=None)
            batch.append(Item(kind, subscription.mailbox, folder, entry["id"], writer(entry), received=modified))
        if batch:
            store_items(subscription.tenant, batch)
            total += len(batch)
    archived = archive_access.mailbox_places(subscription.tenant, subscription.mailbox, kind)
    for graph_id, (_, deleted) in archived.items():
        if not deleted and graph_id not in listed:
            record_deletion(subscription.tenant, subscription.mailbox, graph_id)
            total += 1
    if newest and newest != since:
        ItemWatermark.objects.update_or_create(
            tenant=subscription.tenant,
            user_id=subscription.user_id,
            kind=kind,
            defaults={"modified_until": newest},
        )
    return total
