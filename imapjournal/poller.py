"""The IMAP journal poller: new reports from a journal mailbox into the archive.

For each mailbox, a session: sign in (XOAUTH2), select INBOX, read its
UIDVALIDITY, then take the messages by UID in batches of ARCHIVA_IMAP_BATCH:

1. fetch them (`BODY.PEEK[]`: nothing is marked on the server yet);
2. store and record them exactly as the SMTP ingest stores a journal report
   (`ingest.record.commit_batch`: bytes durable in the tenant's bucket, the
   Delivery rows committed, the objects flushed) and publish them to the
   worker (`ingest.delivery.enqueue`; the sweep covers a broker outage);
3. note the highest UID now durable (`last_uid`);
4. only then delete them from the mailbox, or move them to the folder.

Idempotent after a crash at any point: a report's queue id is derived from
the mailbox and the SHA-256 of its bytes (`report_queue_id`), and the
Delivery table is unique per (tenant, queue id), so a message fetched again
(a crash between 2 and 4, a new UIDVALIDITY, two pollers at once) is found
recorded and not stored twice; a message at or below `last_uid` that is
still in INBOX is durable already and only waits for step 4.  Then IDLE
where the server offers it (new mail is read at once), else a poll every
ARCHIVA_IMAP_POLL_INTERVAL.  Errors go to the journal's `last_error` (shown
on System Status and the IMAP page) and back off exponentially.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import imapclient
import imapclient.exceptions
from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import F
from django.utils import timezone

from ingest.delivery import enqueue
from ingest.directory import Route
from ingest.record import Envelope, Job, commit_batch, flush_paths

from . import access
from .client import INBOX, ImapError, describe, signed_in
from .models import ImapJournal

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30.0  # seconds after the first failure; doubled for each one after
SESSION_SECONDS = 20 * 60  # a session ends (and signs in again, with a fresh token) after this long
CHECK_EVERY = 1.0  # seconds between looks at the stop flag while idling
# A batch stops growing at this many bytes (reports are held in memory until stored);
# a larger report is a batch of its own.
BATCH_BYTES = 32 * 1024 * 1024


def report_queue_id(mailbox: str, sha256: str) -> str:
    """The queue id of a report read from `mailbox`: the same bytes always get the same id.

    24 hex digits like the ingest's own ids, from SHA-256 over the mailbox
    and the report's hash; (tenant, queue id) is unique, so recording a
    report a second time fails instead of doubling it.
    """
    return hashlib.sha256(f"imap\0{mailbox}\0{sha256}".encode()).hexdigest()[:24].upper()


def backoff_seconds(failures: int) -> float:
    """How long to wait after `failures` failures in a row: 30 s, 60 s, 120 s, ... up to ARCHIVA_IMAP_BACKOFF_MAX."""
    if failures <= 0:
        return 0.0
    return float(min(settings.ARCHIVA_IMAP_BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 30)))


# --- the durable path -----------------------------------------------------------------


@dataclass
class Peer:
    """What the Delivery rows say about where the reports came from (as the SMTP ingest notes its peer)."""

    host: str
    ip: str | None = None
    tls_version: str = ""
    tls_cipher: str = ""

    @classmethod
    def of(cls, client: imapclient.IMAPClient, host: str) -> Peer:
        peer = cls(host)
        try:
            sock = client.socket()
            peer.ip = str(sock.getpeername()[0])
            peer.tls_version = str(sock.version() or "")  # an SSLSocket
            cipher = sock.cipher()
            peer.tls_cipher = str(cipher[0]) if cipher else ""
        except (OSError, AttributeError):
            pass
        return peer


def store_reports(journal: ImapJournal, peer: Peer, reports: list[bytes]) -> int:
    """Make these reports durable as the SMTP ingest makes a journal report durable; how many were new.

    Returns once every report is stored and recorded (new, or found
    recorded before); raises ImapError when some could not be (storage or
    database trouble): they stay on the server and are tried again.
    """
    tenant = journal.tenant
    envelope = Envelope(mail_from="", peer_ip=peer.ip, helo=peer.host, tls_version=peer.tls_version,
                        tls_cipher=peer.tls_cipher)  # fmt: skip
    envelope.routes[tenant.pk] = (Route(tenant.pk, tenant.bucket, tenant.region, None), [journal.mailbox])
    jobs: dict[str, Job] = {}
    for raw in reports:
        sha256 = hashlib.sha256(raw).hexdigest()
        queue_id = report_queue_id(journal.mailbox, sha256)
        jobs.setdefault(queue_id, Job(0, envelope, raw, sha256, len(raw), queue_id=queue_id))
    known = access.recorded_queue_ids(tenant, jobs)
    fresh = [job for queue_id, job in jobs.items() if queue_id not in known]
    if not fresh:
        return 0
    outcomes, created = commit_batch(fresh, flush_paths())
    enqueue(created)
    failed = {job.queue_id: error for job, error in outcomes if error is not None}
    if failed:
        # Another poller may have recorded the same report first (the unique constraint refused ours).
        missing = set(failed) - access.recorded_queue_ids(tenant, failed)
        if missing:
            error = failed[next(iter(missing))]
            raise ImapError(
                f"{len(missing)} of {len(jobs)} reports could not be stored ({type(error).__name__}: {error}); "
                "they stay in the mailbox and are tried again"
            )
    return len(created)


# --- the poller's state ---------------------------------------------------------------------


def _update(journal: ImapJournal, **values: object) -> None:
    for name, value in values.items():
        setattr(journal, name, value)
    ImapJournal.objects.filter(pk=journal.pk).update(**values, updated_at=timezone.now())


def note_uidvalidity(journal: ImapJournal, uidvalidity: int) -> None:
    """The mailbox's UIDVALIDITY; a new one means its UIDs start over (every message is read again)."""
    if journal.uidvalidity != uidvalidity:
        if journal.uidvalidity is not None:
            log.warning(
                "IMAP journal %s: UIDVALIDITY changed from %s to %s; reading the mailbox again",
                journal.pk,
                journal.uidvalidity,
                uidvalidity,
            )
        _update(journal, uidvalidity=uidvalidity, last_uid=0)


def note_durable(journal: ImapJournal, last_uid: int, new: int) -> None:
    """Reports up to `last_uid` are durable; `new` of them were not recorded before."""
    journal.archived += new
    journal.last_uid = last_uid
    ImapJournal.objects.filter(pk=journal.pk).update(
        last_uid=last_uid, archived=F("archived") + new, updated_at=timezone.now()
    )


def note_success(journal: ImapJournal) -> None:
    now = timezone.now()
    _update(journal, last_run_at=now, last_success_at=now, last_error="", failures=0, backoff_until=None)


def note_failure(journal: ImapJournal, error: str) -> None:
    """An error: kept for System Status, and the next try waits (longer after each failure in a row)."""
    now = timezone.now()
    failures = journal.failures + 1
    until = now + timedelta(seconds=backoff_seconds(failures))
    log.warning("IMAP journal %s of tenant %s: %s (retry at %s)", journal.pk, journal.tenant_id, error, until)
    _update(
        journal,
        last_run_at=now,
        last_error=error[:2000],
        last_error_at=now,
        failures=failures,
        backoff_until=until,
    )


# --- one session ----------------------------------------------------------------------------


@dataclass
class Session:
    """A signed-in connection to one journal mailbox, INBOX selected."""

    journal: ImapJournal
    client: imapclient.IMAPClient
    peer: Peer
    archived: int = 0  # reports newly stored in this session
    _folder_ready: bool = field(default=False, repr=False)

    def select(self) -> None:
        selected = self.client.select_folder(INBOX)
        uidvalidity = selected.get(b"UIDVALIDITY")
        if uidvalidity is None:
            raise ImapError(f"{self.journal.server} gave no UIDVALIDITY for INBOX; its UIDs cannot be relied on")
        note_uidvalidity(self.journal, int(uidvalidity))

    def archive_new(self) -> int:
        """Store every report in INBOX and take it off the server; how many were new."""
        new = 0
        while True:
            self.announced()  # what came before this search, the search sees
            # ALL, flagged \Deleted too: a crash between STORE \Deleted and EXPUNGE leaves
            # durable reports flagged, and a report someone else flagged is still archived.
            uids = sorted(int(uid) for uid in self.client.search(["ALL"]))
            waiting = [uid for uid in uids if uid <= self.journal.last_uid]
            if waiting:  # durable already: a crash (or a failed move) came between 3 and 4
                self.take_off(waiting)
            fresh = [uid for uid in uids if uid > self.journal.last_uid]
            if not fresh:
                if self.announced():
                    continue  # mail came during the search or the take-off: IDLE would not announce it again
                return new
            for batch in self.batches(fresh):
                new += self.archive_batch(batch)

    def announced(self) -> bool:
        """Whether the server announced new mail (EXISTS) since the last call, and forget it.

        A server tells of new mail once, at the end of whichever command is running when
        it notices (Dovecot: after a SEARCH whose result is already fixed without it), and
        IDLE only tells of what was not told before.  imapclient drops those untagged
        responses but imaplib keeps them (`untagged_responses`), which is read here.
        """
        return bool(self.client._imap.untagged_responses.pop("EXISTS", None))

    def received(self) -> bool:
        """Whether bytes from the server wait in imaplib's read buffer while idling.

        A server that already has news when IDLE starts sends it in the same packet as
        the continuation ("+ idling" and "* 2 EXISTS": Dovecot, Exchange Online); reading
        the continuation line buffers the rest, where `idle_check`'s poll of the socket
        cannot see it.  Peeking on the socket made non-blocking returns what is buffered
        (or has arrived) and never waits; `idle_done` reads it afterwards.
        """
        sock = self.client.socket()
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(self.client._imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(timeout)

    def batches(self, uids: list[int]) -> Iterator[list[int]]:
        """The UIDs in batches of at most ARCHIVA_IMAP_BATCH messages and about BATCH_BYTES."""
        sizes: dict[int, int] = {}
        for part in chunks(uids, 1000):
            for uid, data in self.client.fetch(part, [b"RFC822.SIZE"]).items():
                sizes[int(uid)] = int(data.get(b"RFC822.SIZE") or 0)
        batch: list[int] = []
        total = 0
        for uid in uids:
            size = sizes.get(uid, 0)
            if batch and (len(batch) >= settings.ARCHIVA_IMAP_BATCH or total + size > BATCH_BYTES):
                yield batch
                batch, total = [], 0
            batch.append(uid)
            total += size
        if batch:
            yield batch

    def archive_batch(self, uids: list[int]) -> int:
        fetched = self.client.fetch(uids, [b"BODY.PEEK[]"])
        reports = []
        for uid in uids:
            data = fetched.get(uid) or {}
            raw = data.get(b"BODY[]")
            if raw is None:
                # Gone meanwhile (another client took it): nothing to store.
                log.info("IMAP journal %s: UID %s vanished before it was read", self.journal.pk, uid)
                continue
            reports.append(bytes(raw))
        new = store_reports(self.journal, self.peer, reports)
        note_durable(self.journal, max(uids), new)
        self.archived += new
        self.take_off(uids)
        return new

    def take_off(self, uids: list[int]) -> None:
        """Delete the (durable) messages from INBOX, or move them to the configured folder."""
        client = self.client
        if self.journal.after_archive == ImapJournal.AfterArchive.MOVE:
            folder = self.folder()
            if not self._folder_ready:
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                self._folder_ready = True
            if client.has_capability("MOVE"):
                client.move(uids, folder)
                return
            client.copy(uids, folder)
        client.delete_messages(uids)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()

    def folder(self) -> str:
        """The move folder in the server's own spelling: levels are written with "/" here,
        joined with the server's hierarchy delimiter ("/" on Exchange, often "." elsewhere)."""
        levels = [level for level in self.journal.move_folder.split("/") if level]
        listed = self.client.list_folders(directory="", pattern="")  # LIST "" "": the delimiter alone
        delimiter = listed[0][1] if listed and listed[0][1] else b"/"
        separator = delimiter.decode() if isinstance(delimiter, bytes) else str(delimiter)
        return separator.join(levels)

    def wait_for_mail(self, seconds: float, stop: threading.Event) -> None:
        """IDLE until the server announces new mail, `seconds` pass or `stop` is set; without IDLE, just wait."""
        if not self.client.has_capability("IDLE"):
            stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        self.client.idle()
        try:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self.received():
                    return
                responses = self.client.idle_check(timeout=min(CHECK_EVERY, left))
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    return
        finally:
            self.client.idle_done()


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_session(journal: ImapJournal, stop: threading.Event, *, lifetime: float = SESSION_SECONDS) -> int:
    """Sign in, archive what is there, then wait for more (IDLE or polling) until the
    session's lifetime ends, `stop` is set or the settings change; how many reports
    were new.  Errors raise (ImapError, or the protocol's and the socket's)."""
    started = time.monotonic()
    with signed_in(journal) as client:
        session = Session(journal, client, Peer.of(client, journal.host))
        session.select()
        while True:
            session.archive_new()
            note_success(journal)
            left = lifetime - (time.monotonic() - started)
            if stop.is_set() or left <= 0:
                return session.archived
            session.wait_for_mail(min(settings.ARCHIVA_IMAP_POLL_INTERVAL, left), stop)
            if stop.is_set() or changed(journal):
                return session.archived


def changed(journal: ImapJournal) -> bool:
    """Whether the settings changed (or the journal was switched off) since the session began."""
    try:
        now = access.journal_by_id(journal.pk)
    except ImapJournal.DoesNotExist:
        return True
    fields = ("enabled", "host", "port", "mailbox", "after_archive", "move_folder")
    return any(getattr(now, name) != getattr(journal, name) for name in fields)


def poll_once(journal: ImapJournal, stop: threading.Event | None = None, *, lifetime: float = 0.0) -> bool:
    """One session (by default: archive what is there, no waiting), its outcome noted on the journal.

    True when it went well; on an error the journal gets `last_error` and a backoff.
    """
    try:
        run_session(journal, stop or threading.Event(), lifetime=lifetime)
    except ImapError as exc:
        note_failure(journal, str(exc))
        return False
    except (OSError, imapclient.exceptions.IMAPClientError) as exc:
        note_failure(journal, f"{journal.server}: {describe(exc)}")
        return False
    except Exception as exc:
        log.exception("IMAP journal %s failed", journal.pk)
        note_failure(journal, f"{type(exc).__name__}: {exc}")
        return False
    return True


# --- the process ------------------------------------------------------------------------------


class Poller:
    """The `manage.py imap_journal` process: a thread per enabled journal mailbox.

    Every few seconds the list of enabled journals is read: a newly enabled
    one gets its thread; a thread ends by itself once its journal is off.
    """

    def __init__(self, *, lifetime: float = SESSION_SECONDS) -> None:
        self.stop = threading.Event()
        self.lifetime = lifetime
        self.threads: dict[int, threading.Thread] = {}

    def run(self) -> None:
        log.info("IMAP journal poller started")
        try:
            while not self.stop.is_set():
                close_old_connections()
                try:
                    self.start_threads(access.enabled_journal_ids())
                except Exception:
                    log.exception("could not read the enabled IMAP journals; trying again")
                self.stop.wait(min(5.0, settings.ARCHIVA_IMAP_POLL_INTERVAL))
        finally:
            for thread in self.threads.values():
                thread.join(timeout=settings.ARCHIVA_IMAP_TIMEOUT + 5)
            connections.close_all()
            log.info("IMAP journal poller stopped")

    def start_threads(self, journal_ids: list[int]) -> None:
        for journal_id in journal_ids:
            thread = self.threads.get(journal_id)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self.follow, args=(journal_id,), name=f"imap-journal-{journal_id}", daemon=True
                )
                self.threads[journal_id] = thread
                thread.start()

    def follow(self, journal_id: int) -> None:
        """Keep one journal mailbox read until it is switched off or the process stops."""
        try:
            while not self.stop.is_set():
                close_old_connections()
                try:
                    journal = access.journal_by_id(journal_id)
                except ImapJournal.DoesNotExist:
                    return
                if not journal.enabled:
                    return
                wait = self.wait_before(journal)
                if wait > 0:
                    self.stop.wait(min(wait, settings.ARCHIVA_IMAP_POLL_INTERVAL))
                    continue
                if not poll_once(journal, self.stop, lifetime=self.lifetime):
                    continue
                if not self.stop.is_set():
                    self.stop.wait(0.1)  # a session ended normally: sign in again at once
        except Exception:
            log.exception("the thread of IMAP journal %s stopped", journal_id)
        finally:
            connections.close_all()

    @staticmethod
    def wait_before(journal: ImapJournal) -> float:
        if journal.backoff_until is None:
            return 0.0
        return max(0.0, (journal.backoff_until - timezone.now()).total_seconds())
