"""The ingest names the archive's tasks and statuses by value, never by import
(tests/test_layers.py): these values must stay what the archive defines."""

from archive import tasks
from archive.models import Message
from ingest import delivery


def test_the_ingest_publishes_tasks_the_archive_registers():
    assert delivery.PROCESS_TASK == tasks.process_deliveries.name
    assert delivery.INDEX_TASK == tasks.index_pending.name


def test_the_ingest_names_the_archives_pending_index_status():
    assert delivery.INDEX_PENDING == Message.IndexStatus.PENDING
