"""A Microsoft 365 organization with mailboxes full of mail, in the fake, for the import's tests and benchmark.

`mailbox_with_mail` fills a fake user's mailbox with messages spread over
nested folders; `sync_mailboxes` makes the tenant know the fake's users the
way the connection's mailbox sync does (one Mailbox row per Graph user);
`archive_all` runs the worker's one processing path on whatever was stored.
"""

from __future__ import annotations

import datetime as dt
import uuid

from archive.processing import process_deliveries
from ingest.models import Delivery
from tenants.models import Tenant

FOLDERS = ["Inbox", "Inbox/Projects", "Inbox/Projects/Alpha", "Archive/2024", "Sent Items"]


def message_bytes(n: int, mailbox: str, folder: str, *, message_id: str | None = None, padding: int = 0) -> bytes:
    """A plain message as it sits in a mailbox (no journal envelope): unique Message-ID, a searchable word."""
    mid = message_id or f"m{n}.{uuid.uuid4().hex[:12]}@fabrikam.com"
    body = f"Quarterly figures number {n} for {folder}. Codeword zebra{n}.\r\n" + ("x" * 76 + "\r\n") * (padding // 78)
    return (
        f"From: Sam Sender <sam@fabrikam.com>\r\nTo: {mailbox}\r\nSubject: Report {n} in {folder}\r\n"
        f"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\nMessage-ID: <{mid}>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def mailbox_with_mail(fake, directory_id: str, upn: str, count: int, *, start: int = 0, folders=FOLDERS):
    """A fake user whose mailbox holds `count` messages, round-robin over `folders`; (user, {graph id: folder})."""
    user = fake.add_user(directory_id, upn)
    placed = {}
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for i in range(count):
        folder = folders[i % len(folders)]
        n = start + i
        graph_id = fake.add_message(
            user, folder, message_bytes(n, upn, folder), received=base + dt.timedelta(minutes=n)
        )
        placed[graph_id] = folder
    return user, placed


def sync_mailboxes(fake, tenant: Tenant, directory_id: str) -> None:
    """The tenant's Mailbox rows for the fake directory's users, as the connection's mailbox sync leaves them."""
    from m365.models import Mailbox

    for user in fake.tenants[directory_id.lower()].users.values():
        Mailbox.objects.update_or_create(
            tenant=tenant,
            graph_id=user.id,
            defaults={
                "user_principal_name": user.upn,
                "display_name": user.display_name,
                "primary_address": (user.mail or user.upn).lower(),
                "proxy_addresses": [p.split(":", 1)[1].lower() for p in user.proxy_addresses],
                "kind": user.mailbox or "user",
                "has_mailbox": bool(user.mailbox),
            },
        )


def archive_all(tenant: Tenant, chunk: int = 200) -> int:
    """Run the worker's processing (verify, parse, merge, index) on every stored delivery of the tenant."""
    from archive.actions import index_pending

    ids = list(
        Delivery.objects.filter(tenant=tenant, status__in=[Delivery.Status.STORED, Delivery.Status.RECEIVED])
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for start in range(0, len(ids), chunk):
        result = process_deliveries(ids[start : start + chunk])
        assert not result.troubled, result.troubled
    while index_pending(500):
        pass
    return len(ids)
