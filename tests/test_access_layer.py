"""Tenant-owned rows are reached only through the access layer (STYLE.md rule 2):
`tenants.access` for tenants' own rows, `archive.access` for messages and deliveries.

Like Zulip's semgrep rule against raw `Stream.objects.filter` in views: any
module outside the access layer that queries a tenant-owned model's manager
directly fails this test, so tenant scoping cannot be forgotten.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "archiva",
    "archive",
    "billing",
    "compliance",
    "imapjournal",
    "infra",
    "ingest",
    "m365",
    "regions",
    "signin",
    "tenants",
    "web",
]
TENANT_OWNED = {
    "Alias",
    "ApiToken",
    "Certificate",  # m365
    "Connection",  # m365
    "Mailbox",  # m365
    "SyncedAlias",  # m365
    "ImportRun",  # m365, the historical import (its mailboxes and sources are reached through it)
    "ImportDay",  # m365
    "Subscription",  # m365 folder sync
    "Notification",  # m365 folder sync
    "FolderDelta",  # m365 folder sync
    "ItemWatermark",  # m365 folder sync
    "AuditEvent",
    "AuditChain",
    "BillingAccount",  # billing
    "StripeEvent",  # billing
    "AuditRoot",
    "Delivery",
    "Domain",
    "Export",  # compliance
    "Import",  # compliance
    "Invitation",
    "JournalToken",
    "Membership",
    "Message",
    "MessageSource",
    "RejectionCount",
    "Tenant",
    "Hold",  # compliance
    "ImapJournal",  # imapjournal
    "HeldObject",  # compliance
    "PendingPurge",  # compliance
    "RetentionChange",  # compliance
    "RetentionPolicy",  # compliance
    "EntraSignin",  # signin
    "RoleRule",  # signin
    "EntraIdentity",  # signin
}
MANAGERS = {"objects", "_default_manager", "_base_manager"}

# The access layer itself, the named writers, and the ingest's internals
# (the SMTP side and the worker look tokens up and record deliveries across
# tenants by design: the tenant comes from the token lookup).
ALLOWED_FILES = {
    "tenants/access.py",
    "archive/access.py",
    "tenants/actions.py",
    "tenants/audit.py",
    "tenants/api_tokens.py",
    "archive/actions.py",
    "archive/items.py",  # the named writers of mailbox items (store, move, delete)
    "archive/metrics.py",  # the operator's read-only counts across tenants (/metrics)
    # The Microsoft 365 connection's access layer and its writers (of connections, certificates, mailboxes).
    "m365/access.py",
    "m365/connection.py",
    "m365/certificates.py",
    "m365/directory.py",
    "m365/import_actions.py",  # the named reader and writers of imports (start, pause, resume, progress)
    "m365/importer.py",  # the import engine, on the rows of one import it claimed
    # Retention and legal hold: their rows' one way in and named writers, and the
    # purge and WORM sync, which decide over a tenant's messages message by message.
    "compliance/retention.py",
    "compliance/holds.py",
    "compliance/purge.py",
    "compliance/worm.py",
    # eDiscovery exports and upload imports: their access functions and named writers.
    "compliance/exports.py",
    "compliance/imports.py",
    # Folder sync: its access layer (notifications, subscriptions by tenant) and its writers.
    "m365/notifications.py",
    "m365/subscriptions.py",
    "m365/changes.py",
    "m365/items.py",
    # IMAP journaling: its access layer, the settings' writer and the poller's state.
    "imapjournal/access.py",
    "imapjournal/config.py",
    "imapjournal/poller.py",
    # Sign-in with Microsoft: its access layer (and the routing of an address's domain to its
    # tenant) and its named writers (settings, rules, the account and membership of a sign-in).
    "signin/access.py",
    "signin/actions.py",
    "billing/access.py",  # billing accounts and Stripe events: their one way in
}
ALLOWED_DIRS = ("ingest/",)


def direct_queries(source: str, filename: str = "<source>") -> list[str]:
    """`Model.objects`-style uses of tenant-owned models, as "line: Model.manager"."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in MANAGERS
            and isinstance(node.value, ast.Name)
            and node.value.id in TENANT_OWNED
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def is_allowed(relative: str) -> bool:
    return relative in ALLOWED_FILES or relative.startswith(ALLOWED_DIRS) or "/migrations/" in relative


def checked_modules() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not is_allowed(path.relative_to(ROOT).as_posix())
    ]


def test_no_module_queries_tenant_owned_models_outside_the_access_layer():
    offenders = {
        path.relative_to(ROOT).as_posix(): hits
        for path in checked_modules()
        if (hits := direct_queries(path.read_text(), str(path)))
    }
    assert offenders == {}, "use tenants.access or archive.access instead of querying tenant-owned models directly"


def test_the_scan_covers_the_web_views():
    scanned = {path.relative_to(ROOT).as_posix() for path in checked_modules()}
    assert {"web/views.py", "web/api.py", "web/status.py"} <= scanned
    assert {"web/search.py", "web/messages.py", "web/tokens.py", "web/audit.py"} <= scanned
    assert "archive/management/commands/reindex.py" in scanned
    assert "tenants/access.py" not in scanned
    assert "archive/access.py" not in scanned


def test_the_checker_flags_a_direct_query():
    source = "from ingest.models import Delivery\n\ndef view(request):\n    return Delivery.objects.filter(pk=1)\n"
    assert direct_queries(source) == ["4: Delivery.objects"]


def test_the_checker_flags_every_tenant_owned_model_and_manager():
    source = "Tenant.objects.all()\nMembership._default_manager.get()\nJournalToken._base_manager.count()\n"
    assert direct_queries(source) == [
        "1: Tenant.objects",
        "2: Membership._default_manager",
        "3: JournalToken._base_manager",
    ]


def test_the_checker_ignores_access_functions_other_models_and_prose():
    source = (
        '"""Never call Delivery.objects here."""\n'
        "# Tenant.objects is forbidden\n"
        "User.objects.get(pk=1)\n"
        "access.deliveries(tenant)\n"
    )
    assert direct_queries(source) == []


def test_the_allow_list_is_narrow():
    assert is_allowed("tenants/access.py")
    assert is_allowed("archive/access.py")
    assert is_allowed("ingest/delivery.py")
    assert is_allowed("tenants/migrations/0001_initial.py")
    assert not is_allowed("web/views.py")
    assert not is_allowed("web/adapter.py")
    assert not is_allowed("archive/documents.py")
