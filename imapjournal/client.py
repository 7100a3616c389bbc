"""Signing in to the journal mailbox: an app-only token, TLS, XOAUTH2.

The token comes from the tenant's Microsoft 365 connection (msal, the app's
certificate, scope `https://outlook.office365.com/.default`: what Exchange
Online's IMAP takes from an app granted `IMAP.AccessAsApp` and FullAccess to
the mailbox).  The protocol is `imapclient`'s; this module only turns what
can go wrong into sentences an admin can act on (`ImapError`).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import imapclient
import imapclient.exceptions
from django.conf import settings

from m365 import access as m365_access
from m365.graph import Graph, GraphError

from .models import ImapJournal

log = logging.getLogger(__name__)

OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
INBOX = "INBOX"


class ImapError(Exception):
    """The journal mailbox could not be read; the message says why, for the admin."""


def access_token(journal: ImapJournal) -> str:
    """An app-only token for Exchange's IMAP from the tenant's Microsoft 365 connection."""
    connection = m365_access.connection(journal.tenant)
    try:
        return Graph(connection).token(OUTLOOK_SCOPE)
    except GraphError as exc:
        raise ImapError(f"No token for IMAP from the Microsoft 365 connection: {exc.message}") from None


def tls_context() -> ssl.SSLContext:
    """The system's CAs plus ARCHIVA_MS_CA_BUNDLE (as for Microsoft's other hosts); TLS 1.2 or later."""
    context = ssl.create_default_context()
    if settings.ARCHIVA_MS_CA_BUNDLE:
        context.load_verify_locations(cafile=settings.ARCHIVA_MS_CA_BUNDLE)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(journal: ImapJournal) -> imapclient.IMAPClient:
    """A TLS connection to the journal's server (implicit TLS, as on port 993), not yet signed in."""
    try:
        return imapclient.IMAPClient(
            journal.host,
            port=journal.port,
            ssl=True,
            ssl_context=tls_context(),
            timeout=settings.ARCHIVA_IMAP_TIMEOUT,
        )
    except ssl.SSLCertVerificationError as exc:
        raise ImapError(f"The certificate of {journal.server} is not trusted: {exc.verify_message}") from None
    except (OSError, imapclient.exceptions.IMAPClientError) as exc:
        raise ImapError(f"Cannot reach the IMAP server {journal.server}: {describe(exc)}") from None


def login(client: imapclient.IMAPClient, journal: ImapJournal, token: str) -> None:
    """XOAUTH2 as the journal mailbox with the app's token."""
    try:
        client.oauth2_login(journal.mailbox, token)
    except imapclient.exceptions.LoginError as exc:
        raise ImapError(
            f"The IMAP server {journal.server} refused the app's token for {journal.mailbox} ({describe(exc)}). "
            "Check that the app has the IMAP.AccessAsApp permission with admin consent and that its service "
            "principal has FullAccess to this mailbox (Add-MailboxPermission)."
        ) from None
    except (OSError, imapclient.exceptions.IMAPClientError) as exc:
        raise ImapError(f"Signing in to {journal.server} failed: {describe(exc)}") from None


@contextmanager
def signed_in(journal: ImapJournal) -> Iterator[imapclient.IMAPClient]:
    """A signed-in session with the journal mailbox, logged out (or dropped) at the end."""
    if not journal.is_configured:
        raise ImapError("Enter the IMAP server and the journal mailbox first.")
    token = access_token(journal)
    client = connect(journal)
    try:
        login(client, journal, token)
        yield client
    finally:
        close(client)


def close(client: imapclient.IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the connection may be gone already; nothing to save
        try:
            client.shutdown()
        except Exception:
            log.debug("closing an IMAP connection failed", exc_info=True)


def describe(exc: BaseException) -> str:
    """An exception as a short phrase: IMAP errors carry the server's words as bytes."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer within {settings.ARCHIVA_IMAP_TIMEOUT:g} s"
    text = " ".join(arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg) for arg in exc.args if arg)
    return text.strip() or type(exc).__name__
