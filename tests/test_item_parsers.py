"""The calendar and contact readers (archive.parser.items) and the `kind:` and
`folder:` search terms (search.query): pure functions, no servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive.items import build_tree, normalize_folder
from archive.parser.items import content_lines, parse_contact, parse_event, unescape
from search.backends.base import Scope, scope_query
from search.document import folder_terms
from search.query import And, InFolder, KindIs, Not, ParticipantIn, QueryError, TenantIs, Text, parse


def test_content_lines_are_unfolded_and_parameters_keep_their_quoted_colons():
    [prop] = content_lines(b'ATTENDEE;CN="Doe: John; Jr";ROLE=CHAIR:mailto:jo\r\n hn@contoso.com\r\n')
    assert prop.name == "ATTENDEE"
    assert prop.params == {"CN": "Doe: John; Jr", "ROLE": "CHAIR"}
    assert prop.value == "mailto:john@contoso.com"


def test_text_values_are_unescaped():
    assert unescape(r"Room 4\, Building 2\; east\nsecond line\\") == "Room 4, Building 2; east\nsecond line\\"


def test_an_event_in_a_fixed_offset_zone_quoted_as_rfc_5545_wants_and_an_all_day_event():
    event = parse_event(
        b'BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:Standup\nDTSTART;TZID="UTC+02:00":20260310T090000\n'
        b'DTEND;TZID="UTC+02:00":20260310T091500\nEND:VEVENT\nEND:VCALENDAR\n'
    )
    assert event.date.isoformat() == "2026-03-10T07:00:00+00:00"
    assert event.details["end"] == "2026-03-10T07:15:00+00:00"
    assert event.problems == []
    holiday = parse_event(b"BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:Holiday\nDTSTART;VALUE=DATE:20260401\nEND:VEVENT\n")
    assert holiday.details["all_day"] is True
    assert holiday.date.isoformat() == "2026-04-01T00:00:00+00:00"


def test_a_named_time_zone_is_read_as_utc_and_said_so():
    event = parse_event(
        b"BEGIN:VEVENT\r\nSUMMARY:Review\r\nDTSTART;TZID=W. Europe Standard Time:20260310T090000\r\nEND:VEVENT\r\n"
    )
    assert event.date.isoformat() == "2026-03-10T09:00:00+00:00"
    assert any("read as UTC" in problem for problem in event.problems)


def test_the_event_is_the_vevent_not_its_alarm_nor_the_time_zone():
    event = parse_event(
        b"BEGIN:VCALENDAR\nBEGIN:VTIMEZONE\nTZID:X\nBEGIN:STANDARD\nDTSTART:16010101T030000\nEND:STANDARD\n"
        b"END:VTIMEZONE\nBEGIN:VEVENT\nSUMMARY:Real\nBEGIN:VALARM\nDESCRIPTION:Alarm text\nEND:VALARM\n"
        b"DESCRIPTION:Real text\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    assert event.subject == "Real"
    assert event.body_text == "Real text"
    assert event.date is None


def test_a_contacts_addresses_are_body_text_not_recipients():
    contact = parse_contact(
        b"BEGIN:VCARD\nVERSION:4.0\nN:Example;Erin;;;\nitem1.EMAIL;TYPE=work:Erin@Contoso.com\nTEL:+1 555\nEND:VCARD\n"
    )
    assert contact.subject == "Erin Example"  # no FN: from N, given name first
    assert contact.to == [] and contact.from_addresses == []
    assert contact.details["emails"] == ["erin@contoso.com"]
    assert "Email: erin@contoso.com" in contact.body_text


def test_not_a_calendar_or_a_card_is_archived_with_a_problem():
    assert parse_event(b"hello").problems == ["no VEVENT in the calendar item"]
    assert parse_contact(b"").problems == ["no VCARD in the contact item"]


@given(st.binary(max_size=2000))
def test_the_readers_never_raise(raw):
    parse_event(raw)
    parse_contact(raw)
    parse_event(b"BEGIN:VEVENT\n" + raw + b"\nEND:VEVENT\n")
    parse_contact(b"BEGIN:VCARD\n" + raw)


# --- folder paths, the tree, the index terms ------------------------------------------


def test_folder_paths_are_normalised():
    assert normalize_folder(" /Inbox//Projects / Q3/ ") == "Inbox/Projects/Q3"
    assert normalize_folder("") == ""
    with pytest.raises(ValueError, match="NUL"):
        normalize_folder("In\x00box")


def test_a_folder_is_indexed_with_its_ancestors_in_and_without_its_mailbox():
    paths, mailbox_paths = folder_terms(["anna@contoso.com/Inbox/Projects", "bob@contoso.com/inbox"])
    assert paths == ["inbox", "inbox/projects"]
    assert mailbox_paths == ["anna@contoso.com/inbox", "anna@contoso.com/inbox/projects", "bob@contoso.com/inbox"]


def test_the_tree_sorts_by_name_and_totals_its_subfolders():
    tree = build_tree({"b": 1, "A/x": 2, "A": 0, "a/y": 4})
    assert [(n.name, n.total) for n in tree] == [("A", 2), ("a", 4), ("b", 1)]


# --- the query language -------------------------------------------------------------


def test_kind_and_folder_terms_parse():
    assert parse("kind:event") == KindIs("event")
    assert parse("kind:Contacts") == KindIs("contact")
    assert parse('folder:"Inbox/Sent Items/"') == InFolder("inbox/sent items")
    assert parse("folder:Inbox -kind:mail budget") == And(
        (InFolder("inbox"), Not(KindIs("mail")), Text(None, "budget"))
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [("kind:fax", "kind:mail, kind:event or kind:contact"), ("folder:/", "needs a folder path"), ("kind:(a)", "group")],
)
def test_malformed_kind_and_folder_terms_say_what_is_wrong(query, message):
    with pytest.raises(QueryError, match=message):
        parse(query)


def test_a_plain_users_folder_terms_look_only_in_her_own_mailboxes():
    scoped = scope_query(Scope(7, ["erin@contoso.com"]), "-folder:Inbox")
    assert scoped is not None
    assert scoped.root == And(
        (
            TenantIs(7),
            ParticipantIn(("erin@contoso.com",)),
            Not(InFolder("inbox", ("erin@contoso.com",))),
        )
    )
    admin = scope_query(Scope(7, None), "folder:Inbox")
    assert admin is not None and admin.root == And((TenantIs(7), InFolder("inbox")))
