"""The storage scrub re-reads every object the database vouches for (each
report's range in its pack, each message's original and text) against its
SHA-256, a slice per run over ARCHIVA_SCRUB_PERIOD days, on the folder store
and on S3 (moto); a corrupted or missing object is a finding on System
Status (owners, admins, auditors) and in the metrics until it reads back intact."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from prometheus_client import REGISTRY

from archive.models import Message
from compliance import scrub
from compliance.models import ScrubFinding, ScrubState
from compliance.tasks import scrub_storage
from ingest.models import Delivery
from tests.archive_support import archive, report

Problem = ScrubFinding.Problem


def archived(tenant, n: int) -> list[Message]:
    """n messages archived from n journal reports (packed together by the ingest's committer)."""
    messages = []
    for i in range(n):
        raw = report(f"scrub-{i}@fabrikam.com", f"Scrub {i}", [("To", "erin@contoso.com")], body=f"Body {i}.")
        messages.append(archive(tenant, raw, index=False).message)
    return messages


def bucket_file(tenant, key: str):
    return django_settings.DATA_DIR / "buckets" / tenant.bucket / key


def flip_a_byte(path, at: int) -> bytes:
    """Change one stored byte in place (bit rot): returns the file's bytes as they were."""
    path.chmod(0o600)
    data = path.read_bytes()
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
    return data


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("scrub_storage", *args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def metric(problem: str) -> float | None:
    return REGISTRY.get_sample_value("archiva_storage_scrub_findings", {"problem": problem})


def test_the_scrub_finds_a_flipped_byte_and_a_missing_object_and_status_shows_them(client, org, outsider):
    first, second = archived(org.tenant, 2)
    archived(outsider.memberships.get().tenant, 1)
    code, out = run("--tenant", "Contoso", "--all")
    assert code == 0 and "Contoso" in out and "objects checked, cycle complete" in out
    assert "Fabrikam" not in out  # --tenant: that tenant alone

    delivery = first.deliveries.get()
    pack = bucket_file(org.tenant, delivery.storage_key)
    intact = flip_a_byte(pack, delivery.storage_offset + delivery.size // 2)
    # The worker's pack of the second message: its original and its text, both gone.
    assert second.text_key == second.original_key and second.text_key.startswith("pack/")
    bucket_file(org.tenant, second.text_key).unlink()

    code, out = run("--all")
    assert code == 1 and "3 bad object(s) found" in out
    assert f"content does not match its SHA-256: {delivery.storage_key}" in out
    assert f"object missing: {second.text_key}" in out
    open_ = {(f.problem, f.key, f.offset): f for f in scrub.open_findings(org.tenant)}
    assert set(open_) == {
        (Problem.MISMATCH, delivery.storage_key, delivery.storage_offset),
        (Problem.MISSING, second.original_key, second.original_offset),
        (Problem.MISSING, second.text_key, second.text_offset),
    }
    assert open_[(Problem.MISMATCH, delivery.storage_key, delivery.storage_offset)].delivery_id == delivery.pk
    assert open_[(Problem.MISSING, second.text_key, second.text_offset)].message_id == second.pk
    assert open_[(Problem.MISSING, second.text_key, second.text_offset)].size == second.text_size
    assert not scrub.open_findings(outsider.memberships.get().tenant).exists()
    assert (metric("mismatch"), metric("missing"), metric("unreadable")) == (1, 2, 0)

    client.force_login(org.auditor)
    html = client.get(reverse("status")).content.decode()
    assert 'id="storage-problems">3 bad objects<' in html
    assert f"<code>{second.text_key}</code> bytes {second.text_offset}+{second.text_size}" in html
    assert f'href="/messages/{second.pk}/"' in html
    assert f"<code>{delivery.storage_key}</code> bytes {delivery.storage_offset}+{delivery.size}" in html
    assert client.get("/api/v1/status").json()["storage_scrub"]["problems"] == 3
    client.force_login(org.user)
    assert 'id="integrity"' not in client.get(reverse("status")).content.decode()
    client.force_login(outsider)
    assert 'id="storage-problems"' not in client.get(reverse("status")).content.decode()

    # Repaired (from a replica, say): the next check closes the findings, kept as history.
    pack.write_bytes(intact)
    archived_text = second.text_key
    code, _ = run("--tenant", "Contoso", "--all")
    assert code == 1  # the second message's pack is still missing
    assert [f.key for f in scrub.open_findings(org.tenant)] == [archived_text, archived_text]
    assert ScrubFinding.objects.filter(tenant=org.tenant, resolved_at__isnull=False).count() == 1


def test_each_run_covers_its_share_of_the_period_and_a_cycle_covers_everything(org, settings):
    settings.ARCHIVA_SCRUB_PERIOD = 4  # days
    archived(org.tenant, 3)  # 3 deliveries + 3 messages: 6 rows, 12 objects
    day = dt.datetime(2026, 3, 1, 3, 0, tzinfo=dt.UTC)
    checked = []
    for n in range(4):
        result = scrub.scrub_tenant(org.tenant, now=day + dt.timedelta(days=n))
        checked.append((result.checked, result.cycle_completed))
    # A day is a quarter of the period: ceil(6/4) = 2 rows a run, from where the last stopped
    # (reports are one object each, messages two: original and text); the third run ends the cycle.
    assert checked == [(2, False), (3, False), (4, True), (2, False)]
    state = ScrubState.objects.get(tenant=org.tenant)
    assert state.checked_total == 11 and state.last_cycle_completed_at == day + dt.timedelta(days=2)
    # A missed week is caught up by the next run: the rest of the cycle at once.
    result = scrub.scrub_tenant(org.tenant, now=state.last_run_at + dt.timedelta(days=7))
    assert (result.checked, result.cycle_completed) == (7, True)


def test_the_daily_task_scrubs_every_tenant(org, outsider):
    from archiva.celery import app

    app.conf.task_always_eager = True
    try:
        archived(org.tenant, 1)
        assert scrub_storage() == 2
    finally:
        app.conf.task_always_eager = False
    # Two rows (the report; the message's original and text) over 30 days: a day's share is one row.
    assert ScrubState.objects.get(tenant=org.tenant).checked_total == 1
    assert ScrubState.objects.filter(tenant=outsider.memberships.get().tenant).exists()


def test_scrub_storage_names_an_unknown_tenant(db):
    with pytest.raises(CommandError, match="no tenant named 'Nobody'"):
        call_command("scrub_storage", "--tenant", "Nobody", stdout=io.StringIO())


def test_the_scrub_finds_a_corrupted_and_a_missing_object_on_s3(use_s3, org):
    first, second = archived(org.tenant, 2)
    s3 = use_s3.client
    bucket = org.tenant.bucket
    original = s3.get_object(Bucket=bucket, Key=first.original_key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=first.original_key, Body=original[:-3] + b"xyz")  # same size, other bytes
    s3.delete_object(Bucket=bucket, Key=second.text_key)
    result = scrub.scrub_tenant(org.tenant, whole=True)
    found = {(f.problem, f.key) for f in result.problems}
    assert found == {(Problem.MISMATCH, first.original_key), (Problem.MISSING, second.text_key)}
    assert result.checked == 2 + 2 * 2  # two reports, two originals and two texts


def test_an_object_deleted_with_its_row_during_the_run_is_no_finding(org, monkeypatch):
    """Retention removes a message and its objects while the scrub reads them: nothing is wrong."""
    [message] = archived(org.tenant, 1)
    real_check = scrub.check_object

    def retention_strikes_first(store, bucket, obj):
        if obj.key == message.text_key and obj.offset == message.text_offset:  # its original comes first
            Delivery.objects.filter(message=message).update(message=None)
            Message.objects.filter(pk=message.pk).delete()
            bucket_file(org.tenant, message.text_key).unlink()  # the pack of its original and text
        return real_check(store, bucket, obj)

    monkeypatch.setattr(scrub, "check_object", retention_strikes_first)
    result = scrub.scrub_tenant(org.tenant, whole=True)
    assert result.checked == 3 and result.problems == []
    assert not scrub.open_findings(org.tenant).exists()


def test_a_store_that_does_not_answer_is_an_outage_not_a_bucket_of_findings(org, settings, s3_endpoint):  # credentials
    """S3 down (its own moto server, stopped): the run fails with StorageError and records nothing."""
    from moto.server import ThreadedMotoServer

    from infra.storage import StorageError, get_store
    from tests.servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings.ARCHIVA_STORAGE, settings.ARCHIVA_S3_ENDPOINT = "s3", f"http://127.0.0.1:{port}"
    get_store.cache_clear()
    get_store().create_bucket(org.tenant.bucket)
    archived(org.tenant, 2)
    server.stop()
    with pytest.raises(StorageError):
        scrub.scrub_tenant(org.tenant, whole=True)
    assert not ScrubFinding.objects.exists()
    assert not ScrubState.objects.filter(tenant=org.tenant, checked_total__gt=0).exists()
