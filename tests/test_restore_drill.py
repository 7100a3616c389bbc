"""scripts/restore_drill.py against the real PostgreSQL and S3 servers: a backup
restored into a fresh database and fresh buckets holds every row and every
message byte; a damaged copy is caught and named."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

from archive.models import Message
from ingest.models import Delivery
from tenants.actions import create_tenant
from tests.archive_support import archive, corpus, corpus_names, deliver
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "restore_drill.py"
sys.path.insert(0, str(SCRIPT.parent))
import restore_drill  # noqa: E402


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr("archive.tasks.schedule_indexing", lambda: None)


@pytest.fixture
def region(transactional_db, use_s3, settings, s3_endpoint):
    """Two tenants with mail in S3 buckets of a prefix of their own (the S3 server is shared by the run)."""
    settings.ARCHIVA_S3_BUCKET_PREFIX = f"drill{uuid.uuid4().hex[:8]}-"
    names = corpus_names()
    tenants = [create_tenant(name, make_user(f"owner@{name.lower()}.com")) for name in ("Contoso", "Fabrikam")]
    for number, name in enumerate(names[:6]):
        archive(tenants[number % 2], corpus(name))
    deliver(tenants[0], corpus(names[6]))  # stored, not yet archived: backed up all the same
    settings_dict = connection.settings_dict
    user, host = settings_dict["USER"] or "postgres", settings_dict["HOST"] or "127.0.0.1"
    url = f"postgresql://{user}@{host}:{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    return {"url": url, "prefix": settings.ARCHIVA_S3_BUCKET_PREFIX, "endpoint": s3_endpoint, "tenants": tenants}


def test_the_drill_script_restores_everything_and_says_so(region, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--database-url",
            region["url"],
            "--s3-endpoint",
            region["endpoint"],
            "--bucket-prefix",
            region["prefix"],
            "--workdir",
            str(tmp_path / "backup"),
            "--report",
            str(tmp_path / "report.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["buckets"] == 2
    assert report["deliveries_checked"] == 7
    assert report["message_objects_checked"] == 6 * 2  # six messages: an original and a text each
    assert report["objects"] >= 2 and report["bytes"] > 0
    assert report["tables"] > 20 and report["rows"] > 0
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["counts"]["public.ingest_delivery"] == 7
    # the restored copies were dropped (no --keep)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [report["restored_database"]])
        assert cursor.fetchone()[0] == 0


def restored_and_verified(copy, region, s3) -> restore_drill.Report:
    """Restore the backup into a fresh database and buckets, verify it, drop the copies: the report."""
    database, buckets = restore_drill.restore(copy, region["url"], s3, uuid.uuid4().hex[:10])
    report = restore_drill.Report()
    try:
        restore_drill.verify(copy, region["url"], database, buckets, s3, report)
    finally:
        restore_drill.drop(region["url"], database, buckets, s3)
    return report


def test_a_damaged_backup_object_is_named(region, tmp_path):
    s3 = restore_drill.s3_client(region["endpoint"], "us-east-1")
    copy = restore_drill.backup(region["url"], s3, region["prefix"], tmp_path / "backup")
    bucket = region["tenants"][1].bucket
    report_pack = Delivery.objects.filter(tenant=region["tenants"][1]).values_list("storage_key", flat=True)[0]
    size, digest = copy.objects[bucket][report_pack]
    key = report_pack
    damaged = tmp_path / "backup" / "buckets" / bucket / key
    data = bytearray(damaged.read_bytes())
    data[size // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert hashlib.sha256(data).hexdigest() != digest

    report = restored_and_verified(copy, region, s3)
    assert not report.ok
    assert f"{bucket}/{key}: restored bytes differ from the original (size or sha256)" in report.problems
    assert any(p.startswith("delivery ") and "does not match its sha256" in p for p in report.problems)


def test_a_damaged_message_object_is_named(region, tmp_path):
    """The worker's pack of originals and texts is checked member by member after restore."""
    s3 = restore_drill.s3_client(region["endpoint"], "us-east-1")
    copy = restore_drill.backup(region["url"], s3, region["prefix"], tmp_path / "backup")
    message = Message.objects.filter(tenant=region["tenants"][0]).order_by("pk").first()
    bucket = message.tenant.bucket
    damaged = tmp_path / "backup" / "buckets" / bucket / message.text_key
    data = bytearray(damaged.read_bytes())
    data[(message.text_offset or 0) + 1] ^= 0xFF
    damaged.write_bytes(bytes(data))

    report = restored_and_verified(copy, region, s3)
    assert not report.ok
    assert any(p.startswith(f"message {message.pk}: {bucket}/{message.text_key}") for p in report.problems)


def test_bad_arguments_are_refused_with_a_message(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--database-url",
            "sqlite:///x",
            "--bucket-prefix",
            "a-",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--database-url (or DATABASE_URL) must be a postgresql:// URL" in result.stderr


class CountingS3:
    """The drill's real S3 client, counting its reads of each key."""

    def __init__(self, client):
        self.client = client
        self.reads: dict[str, int] = {}

    def get_object(self, **kwargs):
        self.reads[kwargs["Key"]] = self.reads.get(kwargs["Key"], 0) + 1
        return self.client.get_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_text_object_messages_share_is_read_once_and_counted_for_each(region, tmp_path):
    """Two messages of one large text (their originals, beyond a pack
    member's size, stored alone) leave the same pack of that one text,
    content-addressed: the drill reads it once in its bucket check and once
    for both rows, and names both if it is damaged."""
    body = "quarterly figures attached, unchanged " * 30_000
    for n in (1, 2):
        head = f"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: shared {n}\r\nMessage-ID: <shared-{n}@c.com>"
        archive(region["tenants"][0], f"{head}\r\n\r\n{body}\r\n".encode())
    shared = list(Message.objects.filter(subject__startswith="shared ").order_by("pk"))
    spans = {(m.text_key, m.text_offset, m.text_size) for m in shared}
    assert len(shared) == 2 and len(spans) == 1 and shared[0].original_key != shared[1].original_key
    s3 = CountingS3(restore_drill.s3_client(region["endpoint"], "us-east-1"))
    copy = restore_drill.backup(region["url"], s3.client, region["prefix"], tmp_path / "backup")

    report = restored_and_verified(copy, region, s3)
    assert report.ok, report.problems
    assert report.message_objects_checked == 8 * 2
    assert s3.reads[shared[0].text_key] == 2  # the bucket's object, then the rows' one span

    bucket = region["tenants"][0].bucket
    damaged = tmp_path / "backup" / "buckets" / bucket / shared[0].text_key
    data = bytearray(damaged.read_bytes())
    data[(shared[0].text_offset or 0) + 1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    report = restored_and_verified(copy, region, s3)
    named = f"messages {shared[0].pk}, {shared[1].pk}: {bucket}/{shared[0].text_key} at {shared[0].text_offset}+"
    assert [p for p in report.problems if p.startswith(named) and p.endswith("does not match its sha256")]
