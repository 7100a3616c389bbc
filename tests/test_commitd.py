"""The socket protocol between an ingest process and its committer."""

from __future__ import annotations

from ingest.commitd import frame, unframe


def test_committer_frames_survive_any_split_of_the_stream():
    messages = [(1, b"x" * 70_000, "a"), (2, b"", None), (3, list(range(5)), {"k": "v"})]
    wire = b"".join(frame(m) for m in messages)
    for step in (1, 3, 4096, len(wire)):
        buf, got = bytearray(), []
        for start in range(0, len(wire), step):
            buf += wire[start : start + step]
            got.extend(unframe(buf))
        assert got == messages and not buf


def test_the_committers_insert_writes_the_same_rows_as_bulk_create(db, org):
    """insert_deliveries is the committer's fast path; bulk_create is the reference."""
    from django.db import transaction
    from django.forms.models import model_to_dict

    from ingest.directory import Route
    from ingest.models import Delivery
    from ingest.record import Envelope, delivery_values, insert_deliveries

    envelope = Envelope("ndr@contoso.com", "2001:db8::25", "mail.example", "TLSv1.3", "TLS_AES_256_GCM_SHA384")
    envelope.add_recipient(Route(org.tenant.pk, org.tenant.bucket, "us", None), "journal-x@archive.archiva.com")
    envelope.add_recipient(Route(org.tenant.pk, org.tenant.bucket, "us", None), "Ünïcode@archive.archiva.com")
    values = delivery_values(envelope, "Q1", "a" * 64, 123)
    with transaction.atomic():
        ids = insert_deliveries([*values, {**values[0], "queue_id": "Q2"}])
    reference = Delivery.objects.bulk_create([Delivery(**{**values[0], "queue_id": "R1"})])[0]
    inserted = Delivery.objects.filter(queue_id__in=["Q1", "Q2"]).values_list("id", flat=True)
    assert len(ids) == 2 and set(ids) == set(inserted)
    fast = model_to_dict(Delivery.objects.get(queue_id="Q1"))
    slow = model_to_dict(Delivery.objects.get(pk=reference.pk))
    assert {k: v for k, v in fast.items() if k not in ("id", "queue_id")} == {
        k: v for k, v in slow.items() if k not in ("id", "queue_id")
    }
    assert fast["rcpt_to"] == ["journal-x@archive.archiva.com", "Ünïcode@archive.archiva.com"]
    assert fast["peer_ip"] == "2001:db8::25" and fast["status"] == Delivery.Status.STORED
