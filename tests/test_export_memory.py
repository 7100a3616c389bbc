"""An export's memory stays flat however many messages it holds: the ids
wait in a spool file, messages are read a chunk at a time, and the ZIP's
central directory waits on disk (`SpilledZipFile`).  Measured with
tracemalloc (Python allocations: zlib's and the search engine's own are not
counted, and neither grows with the count here)."""

from __future__ import annotations

import tracemalloc
import zipfile

import pytest

from archive.actions import index_pending
from archive.items import Item, store_items
from archive.processing import process_deliveries
from compliance import exports
from compliance.models_export import Export
from ingest.models import Delivery
from tests.conftest import membership_of


def peak_of(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_entries(archive_zip: zipfile.ZipFile, count: int) -> None:
    for n in range(count):
        with archive_zip.open(exports._entry(f"messages/{n}.eml"), "w", force_zip64=True) as entry:
            entry.write(b"Subject: x\r\n\r\nbody\r\n")


def test_the_spilled_central_directory_does_not_grow_with_the_entries(tmp_path):
    count = 20_000

    def spilled() -> None:
        with exports.SpilledZipFile(tmp_path / "spilled.zip", tmp_path / "records") as archive_zip:
            write_entries(archive_zip, count)

    def plain() -> None:
        with zipfile.ZipFile(tmp_path / "plain.zip", "w", allowZip64=True) as archive_zip:
            write_entries(archive_zip, count)

    spilled_peak, plain_peak = peak_of(spilled), peak_of(plain)
    assert plain_peak > 4_000_000  # what it would cost: some 300 bytes an entry, kept to the end
    assert spilled_peak < 1_000_000, spilled_peak
    with zipfile.ZipFile(tmp_path / "spilled.zip") as archive_zip:
        assert archive_zip.testzip() is None
        names = archive_zip.namelist()
    assert len(names) == count and names[-1] == f"messages/{count - 1}.eml"


def mail(n: int) -> bytes:
    return (
        f"From: sender@northwind.example\r\nTo: erin@contoso.com\r\nSubject: {'Few' if n < 100 else 'Bulk'} {n}\r\n"
        f"Date: Tue, 04 Feb 2020 10:00:00 +0000\r\nMessage-ID: <bulk-{n}@northwind.example>\r\n\r\n"
        + "A line of body text that is here to take some room.\r\n"
        * 20
    ).encode()


@pytest.mark.django_db
def test_an_export_of_many_messages_costs_no_more_memory_than_one_of_few(org, monkeypatch):
    items = [Item("mail", "", "", f"upload:{n}", mail(n), upload="bulk.mbox") for n in range(800)]
    for start in range(0, len(items), 200):
        store_items(org.tenant, items[start : start + 200])
    ids = list(Delivery.objects.filter(tenant=org.tenant).values_list("pk", flat=True))
    for start in range(0, len(ids), 200):
        process_deliveries(ids[start : start + 200], index=False)
    while index_pending(500):
        pass
    monkeypatch.setattr(exports, "CHUNK", 50)
    membership = membership_of(org.owner)

    def export(query: str) -> None:
        made = exports.create_export(membership, query, "eml-zip")
        assert exports.build_export(made.pk) == Export.State.DONE
        assert Export.objects.get(pk=made.pk).total == (100 if query else 800)

    export("")  # warm up: imports, caches, the index opened
    few = peak_of(lambda: export("subject:few"))
    many = peak_of(lambda: export(""))
    assert many < few * 1.5, (few, many)
