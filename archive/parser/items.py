"""Calendar events (iCalendar, RFC 5545) and contacts (vCard, RFC 6350 / 2426)
from a mailbox, read into a ParsedReport like mail, so the archive keeps one path.

A hand parser of the few properties the archive shows and searches (no
`icalendar`/`vobject` dependency for a dozen properties): content lines
unfolded, parameters split with their quoting, text values unescaped.
Never raises on any input: what cannot be read goes into `problems`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from archive.parser.parsed import ParsedReport

# Bounds: a hostile item must not cost more than a normal message.
MAX_LINES = 50_000
MAX_VALUE = 100_000
MAX_LIST = 1_000


@dataclass
class Property:
    name: str  # upper-case
    params: dict[str, str] = field(default_factory=dict)  # names upper-case, values unquoted
    value: str = ""


def content_lines(raw: bytes) -> list[Property]:
    """The unfolded content lines of an iCalendar or vCard object, parsed."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\n[ \t]", "", text)  # unfolding: a line break followed by one space or tab
    found: list[Property] = []
    for line in text.split("\n")[:MAX_LINES]:
        if line.strip():
            prop = _property(line)
            if prop is not None:
                found.append(prop)
    return found


def _property(line: str) -> Property | None:
    """NAME;PARAM=value;PARAM="quoted:value":VALUE; None when there is no colon outside quotes."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ":" and not quoted:
            head, value = line[:index], line[index + 1 :]
            break
    else:
        return None
    name, *params = _split_unquoted(head, ";")
    prop = Property(
        name=name.strip().upper().rpartition(".")[2], value=value[:MAX_VALUE]
    )  # "item1.EMAIL": group dropped
    for param in params:
        key, _, param_value = param.partition("=")
        prop.params[key.strip().upper()] = param_value.strip().strip('"')
    return prop


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """RFC 5545 §3.3.11 text: \\n (or \\N) a line break, \\, \\; \\\\ the character itself."""
    return re.sub(r"\\([nN,;\\])", lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def _address(value: str) -> str:
    """The address of a CAL-ADDRESS ("mailto:anna@contoso.com"), lower-cased; "" for none."""
    address = value.strip()
    if address.lower().startswith("mailto:"):
        address = address[7:]
    address = address.strip().lower()
    return address if "@" in address and " " not in address else ""


def _named(prop: Property) -> str:
    """ "Name <address>" from a CN parameter and the address."""
    address = _address(prop.value)
    name = prop.params.get("CN", "").strip()
    return f"{name} <{address}>" if name and address else address or name


def parse_datetime(prop: Property, problems: list[str]) -> datetime | None:
    """DATE-TIME (UTC "Z", with TZID, or floating) or DATE; aware UTC.

    A TZID names a VTIMEZONE in the object, which this parser does not
    resolve: such a time (and a floating one) is read as UTC, off by the
    zone's offset at most, and said so in `problems`.
    """
    value = prop.value.strip()
    try:
        if prop.params.get("VALUE", "").upper() == "DATE" or re.fullmatch(r"\d{8}", value):
            day = date(int(value[:4]), int(value[4:6]), int(value[6:8]))
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)", value)
        if not match:
            problems.append(f"{prop.name}: unreadable time {value[:40]!r}")
            return None
        year, month, day_, hour, minute, second, utc = match.groups()
        when = datetime(int(year), int(month), int(day_), int(hour), int(minute), int(second), tzinfo=UTC)
        if not utc:
            offset = _tzid_offset(prop.params.get("TZID", ""))
            if offset is None:
                problems.append(f"{prop.name}: time zone {prop.params.get('TZID', 'floating')[:60]!r} read as UTC")
            else:
                when = when.replace(tzinfo=timezone(offset)).astimezone(UTC)
        return when
    except ValueError:
        problems.append(f"{prop.name}: invalid time {value[:40]!r}")
        return None


def _tzid_offset(tzid: str) -> timedelta | None:
    """UTC itself, or a fixed offset some servers write as the zone's id ("UTC+02:00")."""
    name = tzid.strip()
    if name.upper() in ("UTC", "GMT", "Z", "ETC/UTC", "COORDINATED UNIVERSAL TIME"):
        return timedelta(0)
    match = re.fullmatch(r"(?:UTC|GMT)\s*([+-])(\d{1,2}):?(\d{2})?", name, re.IGNORECASE)
    if not match:
        return None
    sign, hours, minutes = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    return -offset if sign == "-" else offset


def _component(props: list[Property], name: str) -> list[Property]:
    """The properties of the first `name` component (nested components left out)."""
    inside, depth, found = False, 0, []
    for prop in props:
        if prop.name == "BEGIN":
            if inside:
                depth += 1
            elif prop.value.strip().upper() == name:
                inside = True
            continue
        if prop.name == "END" and inside:
            if depth == 0:
                break
            depth -= 1
            continue
        if inside and depth == 0:
            found.append(prop)
    return found


def _first(props: list[Property], name: str) -> Property | None:
    return next((p for p in props if p.name == name), None)


def _text(props: list[Property], name: str) -> str:
    prop = _first(props, name)
    return unescape(prop.value).strip() if prop else ""


def _report(raw: bytes) -> ParsedReport:
    return ParsedReport(is_journal=False, original=raw, content_sha256=hashlib.sha256(raw).hexdigest())


def parse_event(raw: bytes) -> ParsedReport:
    """A VEVENT: subject from SUMMARY, sender the organizer, To the attendees
    (who see it, as they saw the invitation), date the start, body the
    location and description; its details (start, end, location…) in `details`."""
    report = _report(raw)
    try:
        props = _component(content_lines(raw), "VEVENT")
        if not props:
            report.problems.append("no VEVENT in the calendar item")
        report.details = _event(props, report)
    except Exception as exc:  # a bug of ours must not lose the item: its bytes stay archived
        report.problems.append(f"event parser failure: {type(exc).__name__}: {str(exc)[:200]}")
    return report


def _event(props: list[Property], report: ParsedReport) -> dict[str, Any]:
    organizer = _first(props, "ORGANIZER")
    attendees = [p for p in props if p.name == "ATTENDEE"][:MAX_LIST]
    start = _first(props, "DTSTART")
    end = _first(props, "DTEND")
    starts = parse_datetime(start, report.problems) if start else None
    ends = parse_datetime(end, report.problems) if end else None
    location, description = _text(props, "LOCATION"), _text(props, "DESCRIPTION")
    report.subject = _text(props, "SUMMARY")
    report.from_addresses = [a for a in [_address(organizer.value)] if a] if organizer else []
    report.from_display = _named(organizer) if organizer else ""
    report.to = list(dict.fromkeys(a for p in attendees if (a := _address(p.value))))
    report.date = starts
    report.body_text = "\n\n".join(part for part in (f"Location: {location}" if location else "", description) if part)
    return {
        "uid": _text(props, "UID"),
        "start": starts.isoformat() if starts else None,
        "end": ends.isoformat() if ends else None,
        "all_day": bool(start and (start.params.get("VALUE", "").upper() == "DATE" or len(start.value.strip()) == 8)),
        "location": location,
        "organizer": report.from_display,
        "attendees": [
            {"address": _named(p), "role": p.params.get("ROLE", ""), "status": p.params.get("PARTSTAT", "")}
            for p in attendees
        ],
        "recurrence": _text(props, "RRULE"),
        "status": _text(props, "STATUS"),
    }


def parse_contact(raw: bytes) -> ParsedReport:
    """A VCARD: subject the name, body its addresses, company, title, phones
    and notes; its details (name, emails, phones, company) in `details`.
    Its addresses are not recipients: a contact card is its mailbox owner's,
    not the business of the person it describes."""
    report = _report(raw)
    try:
        props = _component(content_lines(raw), "VCARD")
        if not props:
            report.problems.append("no VCARD in the contact item")
        report.details = _contact(props, report)
    except Exception as exc:  # a bug of ours must not lose the item
        report.problems.append(f"contact parser failure: {type(exc).__name__}: {str(exc)[:200]}")
    return report


def _contact(props: list[Property], report: ParsedReport) -> dict[str, Any]:
    name = _text(props, "FN") or " ".join(
        part for part in reversed(_split_unquoted(_text(props, "N"), ";")[:2]) if part.strip()
    )
    emails = list(dict.fromkeys(a for p in props if p.name == "EMAIL" and (a := _address(unescape(p.value)))))
    phones = [
        {"number": unescape(p.value).strip(), "type": p.params.get("TYPE", "").lower()}
        for p in props
        if p.name == "TEL" and p.value.strip()
    ][:MAX_LIST]
    company = "; ".join(x.strip() for x in _split_unquoted(_text(props, "ORG"), ";") if x.strip())
    title, note = _text(props, "TITLE"), _text(props, "NOTE")
    report.subject = name or (emails[0] if emails else "")
    lines = [f"Email: {email}" for email in emails[:MAX_LIST]]
    lines += [f"Company: {company}" if company else "", f"Title: {title}" if title else ""]
    lines += [f"Phone: {phone['number']}" for phone in phones]
    report.body_text = "\n".join(line for line in [*lines, note] if line)
    return {"name": name, "emails": emails[:MAX_LIST], "phones": phones, "company": company, "title": title}
