"""Graph's events and contacts written as iCalendar and vCard, and read back by the archive's own parser."""

from __future__ import annotations

from archive.parser.items import parse_contact, parse_event
from m365.calendar_items import contact_vcard, event_ics, recurrence_rule

EVENT = {
    "id": "AAMkEv1",
    "iCalUId": "040000008200E00074C5B7101A82E008ABC",
    "subject": "Budget review; Q3, final",
    "createdDateTime": "2026-02-01T08:00:00.0000000Z",
    "lastModifiedDateTime": "2026-02-02T08:00:00.1234567Z",
    "start": {"dateTime": "2026-03-02T09:30:00.0000000", "timeZone": "UTC"},
    "end": {"dateTime": "2026-03-02T10:30:00.0000000", "timeZone": "W. Europe Standard Time"},
    "location": {"displayName": "Room 4, Building B"},
    "body": {"contentType": "html", "content": "<p>Bring the <b>figures</b>.</p>"},
    "organizer": {"emailAddress": {"name": 'Anna "Boss" Smith', "address": "anna@contoso.com"}},
    "attendees": [
        {
            "type": "required",
            "status": {"response": "accepted"},
            "emailAddress": {"name": "Ben", "address": "ben@contoso.com"},
        },
        {
            "type": "optional",
            "status": {"response": "none"},
            "emailAddress": {"name": "", "address": "cy@fabrikam.com"},
        },
    ],
}


def test_an_event_is_standard_icalendar_with_its_fields_escaped_and_lines_folded():
    ics = event_ics({**EVENT, "subject": EVENT["subject"] + " " + "long " * 30})
    assert all(len(line) <= 75 for line in ics.split(b"\r\n"))
    text = ics.decode().replace("\r\n ", "")  # unfolded
    assert text.startswith("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n") and text.endswith("END:VCALENDAR\r\n")
    assert "SUMMARY:Budget review\\; Q3\\, final long" in text
    assert "DTSTART:20260302T093000Z" in text
    assert 'DTEND;TZID="W. Europe Standard Time":20260302T103000' in text
    assert 'ORGANIZER;CN="Anna Boss Smith":mailto:anna@contoso.com' in text
    assert 'ATTENDEE;CN="Ben";ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED:mailto:ben@contoso.com' in text
    assert "ATTENDEE;ROLE=OPT-PARTICIPANT;PARTSTAT=NEEDS-ACTION:mailto:cy@fabrikam.com" in text
    assert "DESCRIPTION:Bring the figures ." in text


def test_the_archive_reads_an_event_back():
    # Asked with Prefer: outlook.timezone="UTC", Graph gives every time in UTC.
    end = {"dateTime": "2026-03-02T10:30:00.0000000", "timeZone": "UTC"}
    parsed = parse_event(event_ics({**EVENT, "end": end, "recurrence": {"pattern": {"type": "daily", "interval": 1}}}))
    assert not parsed.problems
    assert parsed.subject == "Budget review; Q3, final"
    assert parsed.from_addresses == ["anna@contoso.com"] and parsed.to == ["ben@contoso.com", "cy@fabrikam.com"]
    assert parsed.details["start"] == "2026-03-02T09:30:00+00:00" and parsed.details["location"] == "Room 4, Building B"
    assert parsed.details["recurrence"] == "FREQ=DAILY;INTERVAL=1"


def test_all_day_events_and_recurrence():
    all_day = event_ics({**EVENT, "isAllDay": True, "start": {"dateTime": "2026-03-02T00:00:00", "timeZone": "UTC"}})
    assert b"DTSTART;VALUE=DATE:20260302" in all_day
    weekly = {
        "pattern": {"type": "weekly", "interval": 2, "daysOfWeek": ["monday", "Wednesday"]},
        "range": {"type": "endDate", "endDate": "2026-12-31"},
    }
    assert recurrence_rule(weekly) == "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;UNTIL=20261231"
    monthly = {
        "pattern": {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["friday"], "index": "last"},
        "range": {"type": "numbered", "numberOfOccurrences": 6},
    }
    assert recurrence_rule(monthly) == "FREQ=MONTHLY;INTERVAL=1;BYDAY=-1FR;COUNT=6"
    assert recurrence_rule(None) == "" and recurrence_rule({"pattern": {"type": "hourly"}}) == ""
    assert b"RRULE:FREQ=WEEKLY" in event_ics({**EVENT, "recurrence": weekly})


def test_a_contact_is_a_vcard_the_archive_reads_back():
    contact = {
        "id": "AAMkCt1",
        "displayName": "Quentin Quokka",
        "givenName": "Quentin",
        "surname": "Quokka",
        "emailAddresses": [{"name": "Q", "address": "q@fabrikam.com"}, {"address": "quentin@home.example"}],
        "businessPhones": ["+1 555 0100"],
        "mobilePhone": "+1 555 0199",
        "companyName": "Fabrikam, Inc.",
        "department": "Sales",
        "jobTitle": "Buyer",
        "businessAddress": {"street": "1 Main St", "city": "Springfield", "countryOrRegion": "US"},
        "personalNotes": "Met at the fair;\nlikes tea",
    }
    vcard = contact_vcard(contact).decode()
    assert "FN:Quentin Quokka" in vcard and "N:Quokka;Quentin;;;" in vcard
    assert "ORG:Fabrikam\\, Inc.;Sales" in vcard and "TEL;TYPE=CELL:+1 555 0199" in vcard
    assert "NOTE:Met at the fair\\;\\nlikes tea" in vcard
    assert "ADR;TYPE=WORK:;;1 Main St;Springfield;;;US" in vcard
    parsed = parse_contact(contact_vcard(contact))
    assert not parsed.problems
    assert parsed.details["name"] == "Quentin Quokka"
    assert parsed.details["emails"] == ["q@fabrikam.com", "quentin@home.example"]
    assert parsed.details["company"] == "Fabrikam, Inc.; Sales" and parsed.details["title"] == "Buyer"
