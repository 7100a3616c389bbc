"""Upgrading to search schema v3 needs no operator step: the migration marks
every indexed message pending, and the worker's sweep indexes them again."""

from __future__ import annotations

import importlib

from django.apps import apps

from archive import tasks
from archive.models import Message
from ingest import delivery as lifecycle
from tests.archive_support import archive, backend_fixture, corpus, search_ids  # noqa: F401

upgrade = importlib.import_module("archive.migrations.0004_reindex_for_hidden_recipients")


def test_after_the_schema_upgrade_the_sweep_fills_the_new_index_by_itself(org, backend):
    delivery = archive(org.tenant, corpus("02-bcc-expanded-forwarded.eml"))
    message = delivery.message
    backend.delete_tenant(org.tenant.pk)  # what a new schema's index holds: nothing
    assert search_ids(backend, org.tenant, "") == []

    upgrade.mark_for_reindex(apps, None)
    message.refresh_from_db()
    assert message.index_status == Message.IndexStatus.PENDING

    assert lifecycle.sweep(grace=0) == 1  # publishes one indexing run for the archived report
    tasks.index_pending.run()  # what the worker does with it
    assert search_ids(backend, org.tenant, "") == [message.pk]
