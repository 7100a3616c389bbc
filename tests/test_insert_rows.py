"""`infra.insert` writes a worker's new Messages exactly as `bulk_create` would,
on PostgreSQL (the test database) and on SQLite (the embedded default, in a
process of its own), and gives each instance the id of its own row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _fields(tenant: Any, n: int) -> dict[str, Any]:
    """A Message's columns with every kind of value the worker writes."""
    return {
        "tenant": tenant,
        "merge_key": f"mid:<m{n}@contoso.com>",
        "message_id": f"m{n}@contoso.com",
        "subject": f"Ünïcode subject {n} \u2014 quarterly",
        "from_display": "Alice <alice@contoso.com>",
        "from_addresses": ["alice@contoso.com"],
        "envelope_sender": "alice@contoso.com",
        "to": ["bob@fabrikam.com", "carol@fabrikam.com"],
        "envelope_recipients": [{"address": "bob@fabrikam.com", "kind": "to"}, {"address": "x@y.z", "kind": "bcc"}],
        "details": {"journal": {"sender": "alice@contoso.com"}},
        "participants": ["alice@contoso.com", "bob@fabrikam.com"],
        "date": datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=UTC),
        "size": 12345 + n,
        "has_attachments": bool(n % 2),
        "attachments": [{"name": "a.pdf", "content_type": "application/pdf", "size": 10, "skipped": ""}],
        "attachment_list": None if n % 2 else [],
        "original_sha256": f"{n:064x}",
        "original_key": "pack/ab/cd",
        "original_offset": 0 if n % 2 else None,
        "original_size": 77 if n % 2 else None,
        "text_key": "",
    }


def compare(tenant: Any) -> dict[str, Any]:
    """Insert messages the fast way and the reference way; what each wrote, and the ids."""
    from django.forms.models import model_to_dict

    from archive.actions import _insert_messages
    from archive.models import Message

    fast = [Message(**_fields(tenant, n)) for n in range(3)]
    _insert_messages(fast)
    reference = Message.objects.bulk_create(
        [Message(**{**_fields(tenant, n), "merge_key": f"ref{n}"}) for n in range(3)]
    )

    def row(pk: int) -> dict[str, Any]:
        values = model_to_dict(Message.objects.get(pk=pk))
        return {k: str(v) for k, v in values.items() if k not in ("id", "merge_key", "created_at")}

    return {
        "fast": [row(m.pk) for m in fast],
        "reference": [row(m.pk) for m in reference],
        "own_rows": [Message.objects.get(pk=m.pk).merge_key == m.merge_key for m in fast],
        "saved": [not m._state.adding for m in fast],
    }


def check(result: dict[str, Any]) -> None:
    assert result["fast"] == result["reference"]
    assert result["own_rows"] == [True] * 3 and result["saved"] == [True] * 3
    assert "Ünïcode" in result["fast"][0]["subject"] and "'bcc'" in result["fast"][0]["envelope_recipients"]


def test_new_messages_are_written_as_bulk_create_writes_them_on_postgresql(db, org):
    from django.db import connection

    assert connection.vendor == "postgresql"
    check(compare(org.tenant))


_SQLITE_SCRIPT = """
import json, sys
import django
django.setup()
from django.core.management import call_command
from django.db import connection
call_command("migrate", verbosity=0)
assert connection.vendor == "sqlite", connection.vendor
from tenants.actions import create_tenant
from tenants.models import User
from tests.test_insert_rows import compare
tenant = create_tenant("Contoso", User.objects.create_user(email="alice@contoso.com", password=None))
print(json.dumps(compare(tenant)))
"""


def test_new_messages_are_written_as_bulk_create_writes_them_on_sqlite(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(ARCHIVA_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_LOG_LEVEL="warning")
    done = subprocess.run(
        [sys.executable, "-c", _SQLITE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check(json.loads(done.stdout.strip().splitlines()[-1]))
