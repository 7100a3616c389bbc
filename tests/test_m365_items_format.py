"""Graph events and contacts as the import and the folder sync write them
(one writer, m365/calendar_items.py): RFC folding and the same bytes for the
same JSON, so an unchanged item is never stored twice.  The properties
themselves: tests/test_m365_calendar_items.py."""

from __future__ import annotations

import copy

from m365.calendar_items import event_ics, graph_instant

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


def test_long_lines_fold_without_splitting_a_character():
    event = {**EVENT, "subject": "Ünïcödé " * 30}
    data = event_ics(event)
    data.decode()  # every folded piece is still valid UTF-8 once joined
    for piece in data.split(b"\r\n"):
        piece.decode()  # and each physical line on its own
    assert "SUMMARY:" + "Ünïcödé " * 30 in unfold(data)  # the subject as Graph gave it


def test_the_same_json_gives_the_same_bytes():
    assert event_ics(copy.deepcopy(EVENT)) == event_ics(EVENT)
    undated = {key: value for key, value in EVENT.items() if key != "lastModifiedDateTime"}
    assert event_ics(undated) == event_ics(copy.deepcopy(undated))  # no clock in DTSTAMP
    changed = {**EVENT, "subject": "Moved", "lastModifiedDateTime": "2026-12-06T05:00:00Z"}
    assert event_ics(changed) != event_ics(EVENT)


def test_graph_datetimes_are_read_as_utc():
    moment = graph_instant("2026-12-06T04:30:12.1234567Z")
    assert moment is not None and moment.isoformat() == "2026-12-06T04:30:12.123456+00:00"  # the 7th digit dropped
    assert graph_instant("yesterday") is None and graph_instant(None) is None
    assert graph_instant("2026-12-06T04:30:12") == moment.replace(microsecond=0)  # no zone: UTC


def test_graph_expiry_times_are_read_with_seven_fractional_digits():
    from datetime import UTC, datetime

    from m365.subscriptions import graph_time, parse_graph_time

    fallback = datetime(2000, 1, 1, tzinfo=UTC)
    for text in ("2026-12-09T05:00:00.1234567Z", "2026-12-09T05:00:00.1234567+00:00", "2026-12-09T05:00:00"):
        assert parse_graph_time(text, fallback).replace(microsecond=0) == datetime(2026, 12, 9, 5, tzinfo=UTC)
    assert parse_graph_time("soon", fallback) is fallback and parse_graph_time(None, fallback) is fallback
    assert graph_time(datetime(2026, 12, 9, 5, 0, 0, 999, tzinfo=UTC)) == "2026-12-09T05:00:00Z"
