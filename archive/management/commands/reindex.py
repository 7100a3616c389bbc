"""`manage.py reindex --tenant <public id or name>`: rebuild a tenant's search index from its bucket.

Every message's extracted text is read back from the bucket (checked
against its SHA-256) and indexed in batches, with a progress line on
stdout.  `--reparse` extracts the text again from the stored originals
(after a parser fix); `--clean` first drops the tenant's index entirely
(search shows a partial archive until the rebuild ends).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from archive import access as archive_access
from archive import actions
from archive.models import Message
from tenants import access


class Progress:
    """One line on stdout, rewritten in place: `[#####-----] 500/1000 (50%) 120 msg/s`."""

    WIDTH = 30

    def __init__(self, out: OutputWrapper, total: int, label: str) -> None:
        self.out, self.total, self.label = out, total, label
        self.started = time.monotonic()

    def show(self, done: int) -> None:
        filled = self.WIDTH * done // self.total if self.total else self.WIDTH
        percent = 100 * done // self.total if self.total else 100
        rate = done / max(time.monotonic() - self.started, 1e-6)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.out.write(f"\r{self.label} [{bar}] {done}/{self.total} ({percent}%) {rate:.0f} msg/s", ending="")
        self.out.flush()

    def finish(self) -> None:
        self.out.write("")


class Command(BaseCommand):
    help = "Rebuild a tenant's search index from the messages stored in its bucket."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's public id (UUID) or exact name")
        parser.add_argument("--batch", type=int, default=500, help="messages per bulk request (default 500)")
        parser.add_argument("--reparse", action="store_true", help="extract the text again from the originals")
        parser.add_argument("--clean", action="store_true", help="drop the tenant's index before rebuilding it")

    def handle(self, *args: Any, tenant: str, batch: int, reparse: bool, clean: bool, **options: Any) -> None:
        from search import get_backend

        try:
            tenant_row = access.tenant_by_reference(tenant)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        messages = archive_access.messages(tenant_row).select_related("tenant").order_by("id")
        if clean:
            get_backend().delete_tenant(tenant_row.pk)
        progress = Progress(self.stdout, messages.count(), f"Reindexing {tenant_row.name}")
        done = indexed = 0
        progress.show(0)
        for chunk in _chunks(messages.iterator(chunk_size=batch), max(1, batch)):
            indexed += actions.index_messages(chunk, reparse=reparse)
            done += len(chunk)
            progress.show(done)
        get_backend().refresh()
        progress.finish()
        self.stdout.write(f"Indexed {indexed} of {done} messages of {tenant_row.name}.")
        if indexed < done:
            failed = archive_access.messages(tenant_row).filter(index_status=Message.IndexStatus.FAILED)
            for message in failed.only("pk", "index_error")[:100]:
                self.stderr.write(f"message {message.pk}: {message.index_error}")
            raise CommandError(f"{done - indexed} messages could not be read from the bucket")


def _chunks(iterable: Iterable[Message], size: int) -> Iterator[list[Message]]:
    chunk: list[Message] = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
