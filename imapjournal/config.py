"""A tenant's IMAP journaling settings and "Test connection": the named writers.

Every change is audited (`setting-changed`, setting `imap.journal`, with
what changed); a test is audited too (`imap.test`).  Changing the server or
the mailbox starts the poller's bookkeeping over: UIDs of another mailbox
mean nothing here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from tenants.audit import record_event
from tenants.models import ApiToken, AuditEvent, Membership, Tenant

from . import access
from .client import INBOX, ImapError, signed_in
from .models import ImapJournal

log = logging.getLogger(__name__)

SETTING = "imap.journal"
# A host name or an IPv4 address; no scheme, no path.
_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# An IMAP folder name we create and move into: printable, "/" for levels, no wildcards or quotes.
_FOLDER = re.compile(r"[^\x00-\x1f\x7f%*\"\\]{1,200}")


class FieldError(ValueError):
    """A setting is unusable; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The settings an admin gives, checked (`parse`)."""

    host: str
    port: int
    mailbox: str
    enabled: bool
    after_archive: str
    move_folder: str


def parse_server(value: str) -> tuple[str, int]:
    """`host` or `host:port` (993 by default); FieldError naming the problem."""
    text = (value or "").strip()
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if "/" in text or not colon:
        host, port = text, 993
    else:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise FieldError(f"server: {text!r}: {port_text!r} is not a port number (1-65535)")
        port = int(port_text)
    if not _HOST.fullmatch(host):
        raise FieldError(f"server: {text!r} is not a host name like outlook.office365.com or outlook.office365.com:993")
    return host.lower(), port


def parse(*, server: str, mailbox: str, enabled: bool, after_archive: str, move_folder: str) -> Settings:
    host, port = parse_server(server)
    address = (mailbox or "").strip().lower()
    if address:
        try:
            validate_email(address)
        except ValidationError:
            raise FieldError(f"mailbox: {address[:100]!r} is not an email address") from None
    if enabled and not address:
        raise FieldError("mailbox: enter the journal mailbox's address before turning IMAP journaling on")
    if after_archive not in ImapJournal.AfterArchive.values:
        raise FieldError("after_archive: either delete or move")
    folder = (move_folder or "").strip().strip("/")
    if after_archive == ImapJournal.AfterArchive.MOVE or folder:
        if not _FOLDER.fullmatch(folder) or folder.upper() == INBOX:
            raise FieldError('move_folder: a folder name other than INBOX, up to 200 characters, without % * " or \\')
    return Settings(host, port, address, bool(enabled), after_archive, folder or "Archived")


def settings_of(journal: ImapJournal) -> dict[str, Any]:
    """The settings as the page and the audit log show them."""
    return {
        "server": journal.server,
        "mailbox": journal.mailbox,
        "enabled": journal.enabled,
        "after_archive": journal.after_archive,
        "move_folder": journal.move_folder,
    }


def journal_for(tenant: Tenant) -> ImapJournal:
    return access.journal(tenant)


def update_journal(
    actor: Membership, new: Settings, *, ip: str | None = None, token: ApiToken | None = None
) -> ImapJournal:
    """Save the settings; audited with what changed.  Another server or mailbox resets the poller's state."""
    with transaction.atomic():
        journal = ImapJournal.objects.select_for_update().get(pk=journal_for(actor.tenant).pk)
        old = settings_of(journal)
        if (new.host, new.port, new.mailbox) != (journal.host, journal.port, journal.mailbox):
            journal.uidvalidity, journal.last_uid = None, 0
            journal.last_test_at, journal.last_test_result = None, {}
        if (new.host, new.port, new.mailbox, new.enabled) != (
            journal.host,
            journal.port,
            journal.mailbox,
            journal.enabled,
        ):
            # A new start: the last error and the backoff were another configuration's.
            journal.last_error, journal.failures, journal.backoff_until = "", 0, None
        journal.host, journal.port, journal.mailbox = new.host, new.port, new.mailbox
        journal.enabled, journal.after_archive, journal.move_folder = new.enabled, new.after_archive, new.move_folder
        changed = {k: {"old": old[k], "new": v} for k, v in settings_of(journal).items() if v != old[k]}
        if not changed:
            return journal
        journal.save()
        record_event(
            actor,
            AuditEvent.Action.SETTING_CHANGED,
            {"setting": SETTING, "changed": changed},
            ip=ip,
            token=token,
            target=journal.mailbox,
        )
    return journal


@dataclass
class TestResult:
    """What "Test connection" found; stored on the journal and shown on the page."""

    __test__ = False  # not a pytest class, whatever its name

    ok: bool
    tested_at: str
    server: str
    mailbox: str
    messages: int | None = None
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def test_connection(
    journal: ImapJournal, *, actor: Membership | None = None, ip: str | None = None, token: ApiToken | None = None
) -> TestResult:
    """Sign in with the app's token, select INBOX and count its messages; never raises for the server's answers."""
    result = TestResult(ok=False, tested_at=timezone.now().isoformat(), server=journal.server, mailbox=journal.mailbox)
    try:
        with signed_in(journal) as client:
            selected = client.select_folder(INBOX, readonly=True)
            result.messages = int(selected.get(b"EXISTS", 0))
            result.ok = True
    except ImapError as exc:
        result.error = str(exc)
    except Exception as exc:  # the protocol's own errors: said as they are
        result.error = f"{journal.server}: {type(exc).__name__}: {exc}"
    if not result.ok:
        log.info("IMAP test of tenant %s failed: %s", journal.tenant_id, result.error)
    journal.last_test_at = timezone.now()
    journal.last_test_result = result.as_json()
    journal.save(update_fields=["last_test_at", "last_test_result", "updated_at"])
    if actor is not None:
        record_event(
            actor,
            AuditEvent.Action.SETTING_CHANGED,
            {"setting": "imap.test", "ok": result.ok, "messages": result.messages, "error": result.error},
            ip=ip,
            token=token,
            target=journal.mailbox,
        )
    return result
