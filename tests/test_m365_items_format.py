"""Graph events and contacts written as iCalendar and vCard: the properties
search needs, RFC escaping and folding, and the same bytes for the same JSON
(so an unchanged item is never stored twice)."""

from __future__ import annotations

import copy

from m365.items import contact_vcf, event_ics, graph_datetime

EVENT = {
    "id": "AAMkEv1",
    "iCalUId": "040000008200E00074C5B7101A82E0080000000001",
    "lastModifiedDateTime": "2026-12-06T04:30:12.1234567Z",
    "subject": "Budget; Q1, Q2 \\ review",
    "body": {"contentType": "html", "content": "<p>Agenda:<br>1. Figures</p><script>x()</script>"},
    "start": {"dateTime": "2026-12-08T09:00:00.0000000", "timeZone": "UTC"},
    "end": {"dateTime": "2026-12-08T10:30:00.0000000", "timeZone": "UTC"},
    "location": {"displayName": "Room 4"},
    "organizer": {"emailAddress": {"name": "Anna Example", "address": "Anna@Contoso.com"}},
    "attendees": [
        {"type": "required", "emailAddress": {"name": 'Bert "B" Example', "address": "bert@fabrikam.com"}},
        {"type": "optional", "emailAddress": {"name": "", "address": "carl@fabrikam.com"}},
        {"type": "required", "emailAddress": {"name": "No address"}},
    ],
}


def unfold(data: bytes) -> list[str]:
    assert all(len(line) <= 75 for line in data.split(b"\r\n")), "a line longer than 75 octets"
    return data.decode().replace("\r\n ", "").split("\r\n")


def test_an_event_becomes_a_vevent_with_what_search_needs():
    lines = unfold(event_ics(EVENT))
    assert lines[:4] == ["BEGIN:VCALENDAR", "VERSION:2.0", lines[2], "BEGIN:VEVENT"]
    assert "UID:040000008200E00074C5B7101A82E0080000000001" in lines
    assert "DTSTAMP:20261206T043012Z" in lines
    assert "DTSTART:20261208T090000Z" in lines and "DTEND:20261208T103000Z" in lines
    assert "SUMMARY:Budget\\; Q1\\, Q2 \\\\ review" in lines
    assert "LOCATION:Room 4" in lines
    assert 'ORGANIZER;CN="Anna Example":mailto:anna@contoso.com' in lines
    assert 'ATTENDEE;ROLE=REQ-PARTICIPANT;CN="Bert B Example":mailto:bert@fabrikam.com' in lines
    assert "ATTENDEE;ROLE=OPT-PARTICIPANT:mailto:carl@fabrikam.com" in lines
    assert not any("No address" in line for line in lines)
    [description] = [line for line in lines if line.startswith("DESCRIPTION:")]
    assert "Agenda:" in description and "Figures" in description and "x()" not in description
    assert lines[-3:] == ["END:VEVENT", "END:VCALENDAR", ""]


def test_all_day_and_zoned_times_keep_their_meaning():
    event = {**EVENT, "isAllDay": True}
    assert "DTSTART;VALUE=DATE:20261208" in unfold(event_ics(event))
    zoned = {**EVENT, "start": {"dateTime": "2026-12-08T09:00:00.0000000", "timeZone": "W. Europe Standard Time"}}
    assert 'DTSTART;TZID="W. Europe Standard Time":20261208T090000' in unfold(event_ics(zoned))


def test_long_lines_fold_without_splitting_a_character():
    event = {**EVENT, "subject": "Ünïcödé " * 30}
    data = event_ics(event)
    data.decode()  # every folded piece is still valid UTF-8 once joined
    for piece in data.split(b"\r\n"):
        piece.decode()  # and each physical line on its own
    assert "SUMMARY:" + ("Ünïcödé " * 30).strip() in unfold(data)


def test_the_same_json_gives_the_same_bytes():
    assert event_ics(copy.deepcopy(EVENT)) == event_ics(EVENT)
    changed = {**EVENT, "subject": "Moved", "lastModifiedDateTime": "2026-12-06T05:00:00Z"}
    assert event_ics(changed) != event_ics(EVENT)


def test_a_contact_becomes_a_vcard():
    contact = {
        "id": "AAMkCt1",
        "displayName": "Bert Example",
        "givenName": "Bert",
        "surname": "Example",
        "emailAddresses": [{"address": "bert@fabrikam.com"}, {"address": ""}],
        "businessPhones": ["+1 555 0100"],
        "mobilePhone": "+1 555 0199",
        "companyName": "Fabrikam, Inc.",
        "department": "Sales",
        "jobTitle": "Buyer",
        "lastModifiedDateTime": "2026-12-06T04:30:12Z",
    }
    lines = unfold(contact_vcf(contact))
    assert lines[:2] == ["BEGIN:VCARD", "VERSION:4.0"]
    assert "FN:Bert Example" in lines and "N:Example;Bert;;;" in lines
    assert "EMAIL:bert@fabrikam.com" in lines and sum(line.startswith("EMAIL") for line in lines) == 1
    assert "TEL;TYPE=work:+1 555 0100" in lines and "TEL;TYPE=cell:+1 555 0199" in lines
    assert "ORG:Fabrikam\\, Inc.;Sales" in lines and "TITLE:Buyer" in lines
    assert "REV:20261206T043012Z" in lines and lines[-2:] == ["END:VCARD", ""]


def test_graph_datetimes_are_read_as_utc():
    moment = graph_datetime("2026-12-06T04:30:12.1234567Z")
    assert moment is not None and moment.isoformat() == "2026-12-06T04:30:12+00:00"
    assert graph_datetime("yesterday") is None and graph_datetime(None) is None


def test_graph_expiry_times_are_read_with_seven_fractional_digits():
    from datetime import UTC, datetime

    from m365.subscriptions import graph_time, parse_graph_time

    fallback = datetime(2000, 1, 1, tzinfo=UTC)
    for text in ("2026-12-09T05:00:00.1234567Z", "2026-12-09T05:00:00.1234567+00:00", "2026-12-09T05:00:00"):
        assert parse_graph_time(text, fallback).replace(microsecond=0) == datetime(2026, 12, 9, 5, tzinfo=UTC)
    assert parse_graph_time("soon", fallback) is fallback and parse_graph_time(None, fallback) is fallback
    assert graph_time(datetime(2026, 12, 9, 5, 0, 0, 999, tzinfo=UTC)) == "2026-12-09T05:00:00Z"
