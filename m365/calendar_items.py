"""Graph events and contacts as the archive keeps them: iCalendar and vCard bytes.

Graph gives events and contacts as JSON only (there is no `$value` for them),
so the import and the folder sync (m365/items.py) write each as a standard
object of its own, the same bytes for the same JSON (an unchanged item is
stored once, whichever of them reads it): an event as an
iCalendar VEVENT (RFC 5545), a contact as a vCard 3.0 (RFC 2426), with the
fields that matter to an archive: who, when, where, what.  Lines are folded
at 75 octets and text escaped as the RFCs say, so any calendar or address
book reads them back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from django.utils.dateparse import parse_datetime

from archive.items import Item

PRODID = "-//Archiva Cloud//Microsoft 365//EN"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HTML_TAG = re.compile(r"<[^>]*>")


def to_item(kind: str, mailbox: str, folder: str, entry: dict[str, Any]) -> tuple[Item, dict[str, str]]:
    """An event or contact of `mailbox` as an archive Item (and nothing skipped)."""
    item_kind: Literal["event", "contact"] = "event" if kind == "event" else "contact"
    content = event_ics(entry) if item_kind == "event" else contact_vcard(entry)
    received = graph_instant(entry.get("createdDateTime"))
    return Item(item_kind, mailbox, folder, entry["id"], content, received=received), {}


def event_ics(event: dict[str, Any]) -> bytes:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "METHOD:PUBLISH", "BEGIN:VEVENT"]
    lines.append(f"UID:{_text(event.get('iCalUId') or event['id'])}")
    stamp = graph_instant(event.get("lastModifiedDateTime")) or graph_instant(event.get("createdDateTime"))
    # Never the time of writing: the same JSON must give the same bytes (the item is stored once).
    lines.append(f"DTSTAMP:{_utc(stamp or EPOCH)}")
    all_day = bool(event.get("isAllDay"))
    for name, key in (("DTSTART", "start"), ("DTEND", "end")):
        value = _event_time(event.get(key), all_day)
        if value:
            lines.append(f"{name}{value}")
    _add(lines, "SUMMARY", event.get("subject"))
    _add(lines, "LOCATION", (event.get("location") or {}).get("displayName"))
    _add(lines, "DESCRIPTION", _body_text(event))
    organizer = (event.get("organizer") or {}).get("emailAddress") or {}
    if organizer.get("address"):
        lines.append(f"ORGANIZER{_cn(organizer)}:mailto:{organizer['address']}")
    for attendee in event.get("attendees") or []:
        address = (attendee.get("emailAddress") or {}).get("address")
        if address:
            role = "OPT-PARTICIPANT" if attendee.get("type") == "optional" else "REQ-PARTICIPANT"
            status = _PARTSTAT.get(((attendee.get("status") or {}).get("response") or "").lower(), "NEEDS-ACTION")
            params = f"{_cn(attendee['emailAddress'])};ROLE={role};PARTSTAT={status}"
            lines.append(f"ATTENDEE{params}:mailto:{address}")
    for name, key in (("CREATED", "createdDateTime"), ("LAST-MODIFIED", "lastModifiedDateTime")):
        moment = graph_instant(event.get(key))
        if moment:
            lines.append(f"{name}:{_utc(moment)}")
    rule = recurrence_rule(event.get("recurrence"))
    if rule:
        lines.append(f"RRULE:{rule}")
    if event.get("isCancelled"):
        lines.append("STATUS:CANCELLED")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return _serialize(lines)


_PARTSTAT = {
    "accepted": "ACCEPTED",
    "declined": "DECLINED",
    "tentativelyaccepted": "TENTATIVE",
    "organizer": "ACCEPTED",
}


_FREQ = {
    "daily": "DAILY",
    "weekly": "WEEKLY",
    "absoluteMonthly": "MONTHLY",
    "relativeMonthly": "MONTHLY",
    "absoluteYearly": "YEARLY",
    "relativeYearly": "YEARLY",
}
_DAYS = {"sunday": "SU", "monday": "MO", "tuesday": "TU", "wednesday": "WE", "thursday": "TH", "friday": "FR"}
_DAYS["saturday"] = "SA"
_WEEK_INDEX = {"first": "1", "second": "2", "third": "3", "fourth": "4", "last": "-1"}


def recurrence_rule(recurrence: object) -> str:
    """Graph's patternedRecurrence as an RRULE ("FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;UNTIL=20261231"), or ""."""
    if not isinstance(recurrence, dict):
        return ""
    pattern, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    freq = _FREQ.get(str(pattern.get("type")))
    if freq is None:
        return ""
    parts = [f"FREQ={freq}", f"INTERVAL={int(pattern.get('interval') or 1)}"]
    days = [_DAYS[d.lower()] for d in pattern.get("daysOfWeek") or [] if str(d).lower() in _DAYS]
    relative = str(pattern.get("type", "")).startswith("relative")
    if days:
        prefix = _WEEK_INDEX.get(str(pattern.get("index") or "first"), "1") if relative else ""
        parts.append("BYDAY=" + ",".join(prefix + day for day in days))
    if pattern.get("dayOfMonth") and not relative and freq in ("MONTHLY", "YEARLY"):
        parts.append(f"BYMONTHDAY={int(pattern['dayOfMonth'])}")
    if pattern.get("month") and freq == "YEARLY":
        parts.append(f"BYMONTH={int(pattern['month'])}")
    if span.get("type") == "endDate" and span.get("endDate"):
        parts.append("UNTIL=" + str(span["endDate"]).replace("-", ""))
    elif span.get("type") == "numbered" and span.get("numberOfOccurrences"):
        parts.append(f"COUNT={int(span['numberOfOccurrences'])}")
    return ";".join(parts)


def contact_vcard(contact: dict[str, Any]) -> bytes:
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"UID:{_text(contact['id'])}"]
    names = [contact.get(k) or "" for k in ("surname", "givenName", "middleName", "title", "generation")]
    display = contact.get("displayName") or " ".join(n for n in (names[1], names[2], names[0]) if n)
    lines.append(f"FN:{_text(display)}")
    lines.append("N:" + ";".join(_text(n) for n in names))
    for email in contact.get("emailAddresses") or []:
        if email.get("address"):
            lines.append(f"EMAIL;TYPE=INTERNET:{_text(email['address'])}")
    phones = [("WORK", p) for p in contact.get("businessPhones") or []]
    phones += [("HOME", p) for p in contact.get("homePhones") or []]
    if contact.get("mobilePhone"):
        phones.append(("CELL", contact["mobilePhone"]))
    lines += [f"TEL;TYPE={kind}:{_text(number)}" for kind, number in phones if number]
    if contact.get("companyName") or contact.get("department"):
        lines.append(f"ORG:{_text(contact.get('companyName') or '')};{_text(contact.get('department') or '')}")
    _add(lines, "TITLE", contact.get("jobTitle"))
    for kind, key in (("WORK", "businessAddress"), ("HOME", "homeAddress"), ("OTHER", "otherAddress")):
        address = contact.get(key) or {}
        parts = [address.get(k) or "" for k in ("street", "city", "state", "postalCode", "countryOrRegion")]
        if any(parts):
            lines.append(f"ADR;TYPE={kind}:;;" + ";".join(_text(p) for p in parts))
    birthday = graph_instant(contact.get("birthday"))
    if birthday:
        lines.append(f"BDAY:{birthday.date().isoformat()}")
    _add(lines, "NOTE", contact.get("personalNotes"))
    modified = graph_instant(contact.get("lastModifiedDateTime"))
    if modified:
        lines.append(f"REV:{_utc(modified)}")
    lines.append("END:VCARD")
    return _serialize(lines)


# --- RFC 5545 / 2426 text ------------------------------------------------------


def _text(value: object) -> str:
    """TEXT escaping: backslash, semicolon, comma and line breaks."""
    text = str(value)
    for old, new in (("\\", "\\\\"), (";", "\\;"), (",", "\\,"), ("\r\n", "\\n"), ("\n", "\\n"), ("\r", "\\n")):
        text = text.replace(old, new)
    return text


def _param(value: str) -> str:
    """A parameter value: quoted, without the characters a quoted value may not hold."""
    return '"' + re.sub(r'["\r\n\x00-\x1f]', "", value) + '"'


def _cn(address: dict[str, Any]) -> str:
    return f";CN={_param(address['name'])}" if address.get("name") else ""


def _add(lines: list[str], name: str, value: object) -> None:
    if value:
        lines.append(f"{name}:{_text(value)}")


def _fold(line: str) -> str:
    """Lines longer than 75 octets continue on the next with a leading space, never inside a UTF-8 sequence."""
    out: list[str] = []
    current = ""
    for char in line:
        limit = 75 if not out else 74
        if len((current + char).encode()) > limit:
            out.append(current)
            current = char
        else:
            current += char
    out.append(current)
    return "\r\n ".join(out)


def _serialize(lines: list[str]) -> bytes:
    return ("\r\n".join(_fold(line) for line in lines) + "\r\n").encode()


def graph_instant(value: object) -> datetime | None:
    """A Graph timestamp (`2026-12-06T10:00:00.1234567Z`, UTC when it names no zone), or None."""
    if not isinstance(value, str) or not value:
        return None
    parsed = parse_datetime(value)  # Graph's seven fractional digits: Django keeps six, drops the rest
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _event_time(value: object, all_day: bool) -> str:
    """`;VALUE=DATE:20260302`, `:20260302T093000Z`, or `;TZID=…:20260302T093000` for Graph's {dateTime, timeZone}."""
    if not isinstance(value, dict) or not value.get("dateTime"):
        return ""
    moment = graph_instant(value["dateTime"])
    if moment is None:
        return ""
    zone = str(value.get("timeZone") or "UTC")
    if all_day:
        return f";VALUE=DATE:{moment.strftime('%Y%m%d')}"
    if zone.upper() in {"UTC", "Z", "GMT"}:
        return f":{_utc(moment)}"
    return f";TZID={_param(zone)}:{moment.strftime('%Y%m%dT%H%M%S')}"


def _body_text(event: dict[str, Any]) -> str:
    body = event.get("body") or {}
    content = str(body.get("content") or "")
    if content and str(body.get("contentType", "")).lower() == "html":
        content = " ".join(_HTML_TAG.sub(" ", content).split())
    return content or str(event.get("bodyPreview") or "")
