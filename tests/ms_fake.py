"""A local, protocol-faithful fake of Microsoft's identity platform and Graph.

One HTTPS server (certificate from a `trustme` CA, written to `ca_path`) is
both the login host and the Graph host: `fake.url` is what
`ARCHIVA_MS_LOGIN_URL` and `ARCHIVA_MS_GRAPH_URL` point at.

Identity: the OpenID discovery document, the JWKS, and a token endpoint for
the client-credentials grant with a certificate client assertion.  The
assertion's RS256 signature is verified with the public key of the
certificate uploaded to the app (found by the JWT header's `x5t`), with its
`aud`, `iss`/`sub` and time range; anything else is refused with AADSTS
errors as Microsoft words them.  Access tokens are JWTs signed by the fake's
own key, with `tid`, `appid`, `roles` (the app's granted permissions) and
the `aud` the scope names (Graph, or Exchange's `https://outlook.office365.com`
for IMAP).  `POST /imap/introspect` is RFC 7662 introspection of those
Exchange tokens for a local IMAP server (Dovecot's oauth2 passdb); a
mailbox is opened to an app with `grant_mailbox`.

Graph v1.0: organization, domains, users (with mailbox settings), mail
folders and messages with delta queries, `$value`, events, calendarView,
contacts and subscriptions with validation, change and lifecycle
notifications.  Every Graph request checks the bearer token (signature,
expiry, audience, tenant) and the role it needs.  `throttle()` injects 429
or 503 answers with Retry-After; per-mailbox concurrency and request counts
are recorded for assertions.

Sign-in (OpenID Connect, authorization-code flow with PKCE): the authorize
endpoint shows a small sign-in page (the account field holds `login_hint`;
the person may pick another account) and redirects back with a code, after
checking the client, the registered redirect URI and the S256 code
challenge; the token endpoint redeems a code once, for the same client and
redirect URI, with the verifier that matches the challenge and a
certificate client assertion checked as above, and answers an RS256 ID
token (`tid`, `oid`, `preferred_username`, `email`, the flow's `nonce`)
signed with the key of the JWKS.  A user of another directory is refused
(AADSTS50020) unless `cross_tenant_tokens` is set: then the token is their
home directory's (a misbehaving or misconfigured authority, for tests of
the `tid` check).  Graph lists a user's `memberOf` (groups and directory
roles), `department` and `jobTitle`.

Admin side (what a test does in "Azure"): `add_tenant`, `register_app`,
`upload_certificate`, `add_redirect_uri`, `add_user`, `add_group`,
`add_directory_role`, `add_folder`, `add_message`, `move_message`,
`delete_message`, `add_event`, `add_contact`, `send_lifecycle`.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import html
import itertools
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jwt
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3600
MAX_MAIL_SUBSCRIPTION_MINUTES = 10070  # Graph's limit for Outlook message subscriptions
VALIDATION_TIMEOUT = 10.0  # Graph's time for the validation echo
NOTIFICATION_TIMEOUT = 3.0  # Graph's time for a notification's 2xx

# The permissions (app roles) each kind of Graph resource accepts; any one suffices.
ROLES_FOR = {
    "organization": {"Organization.Read.All", "Organization.ReadWrite.All", "Directory.Read.All"},
    "domains": {"Domain.Read.All", "Domain.ReadWrite.All", "Directory.Read.All"},
    "users": {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All"},
    "mailboxSettings": {"MailboxSettings.Read", "MailboxSettings.ReadWrite"},
    "mail": {"Mail.Read", "Mail.ReadWrite"},
    "events": {"Calendars.Read", "Calendars.ReadWrite"},
    "contacts": {"Contacts.Read", "Contacts.ReadWrite"},
}
WELL_KNOWN_FOLDERS = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
    "junkemail": "Junk Email",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def x5t_bytes(value: str) -> bytes:
    """The SHA-1 an x5t names (base64url, padded or not); b"" when it is not base64."""
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (ValueError, TypeError):
        return b""


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def graph_id(prefix: str) -> str:
    """An opaque id shaped like Exchange's (base64url, long, never a slash)."""
    return prefix + b64url(secrets.token_bytes(36))


class Reply(Exception):
    """An HTTP answer raised from deep inside a handler."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {"date": iso(now()), "request-id": str(uuid.uuid4())},
            }
        },
        headers,
    )


def aad_error(status: int, error: str, code: str, text: str) -> Reply:
    return Reply(
        status,
        {
            "error": error,
            "error_description": f"{code}: {text}\r\nTrace ID: {uuid.uuid4()}\r\nTimestamp: {iso(now())}",
            "error_codes": [int(code.removeprefix("AADSTS"))],
            "timestamp": iso(now()).replace("T", " ").replace("Z", "Z"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


EXCHANGE_RESOURCE = "https://outlook.office365.com"


def scope_resource(scope: str) -> str:
    """The resource a client-credentials scope names: `https://outlook.office365.com/.default` -> its origin."""
    first = next((s for s in scope.split() if s.endswith("/.default")), "")
    return first.removesuffix("/.default")


# --- state ---------------------------------------------------------------------


@dataclass
class FakeApp:
    client_id: str
    tenant_id: str
    roles: set[str]
    display_name: str
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)  # x5t -> certificate
    redirect_uris: set[str] = field(default_factory=set)  # "Web" platform redirect URIs


@dataclass
class FakeGroup:
    """A security group or a directory role (its `kind`), with its members' user ids."""

    id: str
    display_name: str
    kind: str  # "group" or "directoryRole"
    members: set[str] = field(default_factory=set)
    role_template_id: str = ""


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    scope: str
    user_id: str
    tenant_id: str  # the directory whose token it becomes
    expires: float
    used: bool = False


@dataclass
class Folder:
    id: str
    parent_id: str
    display_name: str
    well_known: str | None = None
    changed_seq: int = 0


@dataclass
class Message:
    id: str
    mime: bytes
    received: dt.datetime
    folder_id: str | None  # None once deleted
    history: list[tuple[int, str | None]]  # (seq, folder id or None) since creation
    change_key: str = field(default_factory=lambda: b64url(secrets.token_bytes(12)))

    def folder_at(self, seq: int) -> str | None:
        where = None
        for when, folder in self.history:
            if when <= seq:
                where = folder
        return where


@dataclass
class FakeUser:
    id: str
    tenant_id: str
    upn: str
    display_name: str
    mail: str | None
    proxy_addresses: list[str]
    mailbox: str | None  # "user", "shared", "room", "equipment", or None: no Exchange mailbox
    account_enabled: bool = True
    department: str | None = None
    job_title: str | None = None
    folders: dict[str, Folder] = field(default_factory=dict)
    root_id: str = ""
    messages: dict[str, Message] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed_folders: dict[str, int] = field(default_factory=dict)  # folder id -> seq of removal


@dataclass
class FakeTenant:
    id: str
    org_name: str
    domains: list[tuple[str, bool]]
    initial_domain: str
    users: dict[str, FakeUser] = field(default_factory=dict)
    groups: dict[str, FakeGroup] = field(default_factory=dict)


@dataclass
class Subscription:
    id: str
    tenant_id: str
    client_id: str
    resource: str
    change_types: set[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: dt.datetime
    user_id: str
    folder_id: str | None  # None: every message of the mailbox

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": iso(self.expiration),
            "creatorId": self.client_id,
            "latestSupportedTlsVersion": "v1_2",
            "includeResourceData": False,
        }


@dataclass
class Cursor:
    """What a skiptoken or deltatoken stands for."""

    kind: str
    items: list[Any]
    offset: int
    page_size: int
    base_path: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NotificationAnswer:
    url: str
    kind: str  # "change", "lifecycle" or "validation"
    status: int  # 0: no answer within Graph's time
    seconds: float
    subscription_id: str | None


# --- the fake --------------------------------------------------------------------


class MicrosoftFake:
    """Identity platform and Graph on one local HTTPS server; see the module docstring."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.folder = Path(tempfile.mkdtemp(prefix="ms-fake-"))
        self.ca_path = self.folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_kid = b64url(secrets.token_bytes(12))
        self.lock = threading.RLock()
        self.tenants: dict[str, FakeTenant] = {}
        self.apps: dict[str, FakeApp] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.imap_mailboxes: dict[str, list[str]] = {}  # app (client id) -> mailboxes it has FullAccess to
        self.cursors: dict[str, Cursor] = {}
        self.seq = itertools.count(1)
        self.current_seq = 0
        # Test knobs and records.
        self.token_lifetime = TOKEN_LIFETIME
        self.latency = 0.0  # seconds each Graph answer waits (to make concurrency visible)
        self.requests: list[tuple[str, str]] = []  # (method, path with query), Graph and identity
        self.mutable_id_requests: list[str] = []  # mailbox item requests without Prefer: IdType="ImmutableId"
        self.token_requests = 0
        self.notification_responses: list[int] = []
        self.notification_log: list[NotificationAnswer] = []
        self.notifications_async = False
        self.codes: dict[str, AuthCode] = {}
        self.cross_tenant_tokens = False  # see the module docstring
        self.id_tokens: list[dict[str, Any]] = []  # claims of every ID token issued
        self.id_token_key: rsa.RSAPrivateKey | None = None  # sign ID tokens with this (forged) key instead
        self._throttles: list[tuple[int, str | None, int, str]] = []  # remaining, user id, status, retry-after
        self._drops = 0  # Graph requests still to be answered by closing the connection
        self._active: dict[str, int] = {}
        self._max_active: dict[str, int] = {}
        self._notify_threads: list[threading.Thread] = []
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    login_url = url
    graph_url = url

    def start(self) -> MicrosoftFake:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server_cert.configure_cert(context)
        self.server = _Server(("127.0.0.1", 0), _Handler, self, context)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="ms-fake", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.wait_for_notifications()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> MicrosoftFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_seq(self) -> int:
        with self.lock:
            self.current_seq = next(self.seq)
            return self.current_seq

    # --- admin side: tenants, apps, certificates ------------------------------------

    def add_tenant(
        self,
        tenant_id: str,
        org_name: str,
        domains: list[tuple[str, bool]] | None = None,
        initial_domain: str | None = None,
    ) -> FakeTenant:
        """A directory; `domains` are (name, verified); the initial `<x>.onmicrosoft.com` is added (verified)."""
        domains = list(domains or [])
        if initial_domain is None:
            stem = (domains[0][0].split(".")[0] if domains else re.sub(r"[^a-z0-9]", "", org_name.lower())) or "tenant"
            initial_domain = f"{stem}.onmicrosoft.com"
        with self.lock:
            tenant = FakeTenant(tenant_id.lower(), org_name, domains, initial_domain.lower())
            self.tenants[tenant.id] = tenant
            return tenant

    def register_app(
        self, tenant_id: str, client_id: str, roles: set[str] | list[str] | tuple[str, ...] = (), name: str = "Archiva"
    ) -> FakeApp:
        """An app registration in the directory, its application permissions granted (admin consent)."""
        with self.lock:
            app = FakeApp(client_id.lower(), tenant_id.lower(), set(roles), name)
            self.apps[app.client_id] = app
            return app

    def grant(self, client_id: str, roles: set[str] | list[str] | tuple[str, ...]) -> None:
        """Replace the app's granted permissions (tokens issued later carry them)."""
        with self.lock:
            self.apps[client_id.lower()].roles = set(roles)

    def upload_certificate(self, client_id: str, cert_pem: str | bytes) -> str:
        """ "Certificates & secrets" → upload: the certificate's x5t (base64url SHA-1 of its DER)."""
        data = cert_pem.encode("ascii") if isinstance(cert_pem, str) else cert_pem
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        x5t = b64url(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest())
        with self.lock:
            self.apps[client_id.lower()].certificates[x5t] = cert
        return x5t

    def add_redirect_uri(self, client_id: str, uri: str) -> None:
        """ "Authentication" → Web platform → redirect URI."""
        with self.lock:
            self.apps[client_id.lower()].redirect_uris.add(uri)

    def add_group(self, tenant_id: str, name: str, members: Sequence[FakeUser | str] = ()) -> FakeGroup:
        """A security group of the directory with these members."""
        return self._add_group(tenant_id, name, "group", members, "")

    def add_directory_role(
        self, tenant_id: str, name: str, members: Sequence[FakeUser | str] = (), template_id: str = ""
    ) -> FakeGroup:
        """An activated directory role (e.g. "Global Administrator") with these members."""
        return self._add_group(tenant_id, name, "directoryRole", members, template_id or str(uuid.uuid4()))

    def _add_group(
        self, tenant_id: str, name: str, kind: str, members: Sequence[FakeUser | str], template_id: str
    ) -> FakeGroup:
        with self.lock:
            group = FakeGroup(str(uuid.uuid4()), name, kind, {self.user(m).id for m in members}, template_id)
            self.tenants[tenant_id.lower()].groups[group.id] = group
            return group

    def remove_certificate(self, client_id: str, x5t: str) -> None:
        with self.lock:
            self.apps[client_id.lower()].certificates.pop(x5t, None)

    # --- admin side: users and their mailboxes ----------------------------------------

    def add_user(
        self,
        tenant_id: str,
        upn: str,
        display_name: str | None = None,
        *,
        mailbox: str | None = "user",
        aliases: list[str] | tuple[str, ...] = (),
        mail: str | None = None,
        account_enabled: bool | None = None,
        user_id: str | None = None,
        department: str | None = None,
        job_title: str | None = None,
    ) -> FakeUser:
        """A directory user; `mailbox` is "user", "shared", "room", "equipment" or None (no mailbox).

        proxyAddresses are `SMTP:<mail>` then `smtp:<alias>` for each alias,
        as Exchange writes them; a user without a mailbox has none.
        """
        upn = upn.lower()
        primary = (mail or upn).lower() if mailbox else mail
        proxies = ([f"SMTP:{primary}"] + [f"smtp:{a.lower()}" for a in aliases]) if mailbox else []
        if account_enabled is None:
            # Exchange creates shared and resource mailboxes with a disabled account.
            account_enabled = mailbox in ("user", None)
        with self.lock:
            tenant = self.tenants[tenant_id.lower()]
            user = FakeUser(
                id=(user_id or str(uuid.uuid4())).lower(),
                tenant_id=tenant.id,
                upn=upn,
                display_name=display_name or upn.split("@")[0].title(),
                mail=primary,
                proxy_addresses=proxies,
                mailbox=mailbox,
                account_enabled=account_enabled,
                department=department,
                job_title=job_title,
            )
            if mailbox:
                seq = self._next_seq()
                user.root_id = graph_id("AQMkRoot")
                user.folders[user.root_id] = Folder(user.root_id, "", "Top of Information Store", "msgfolderroot", seq)
                for well_known, name in WELL_KNOWN_FOLDERS.items():
                    folder = Folder(graph_id("AQMk"), user.root_id, name, well_known, seq)
                    user.folders[folder.id] = folder
            tenant.users[user.id] = user
            return user

    def user(self, who: FakeUser | str) -> FakeUser:
        """A user by object, id or UPN (any tenant)."""
        if isinstance(who, FakeUser):
            return who
        key = who.lower()
        with self.lock:
            for tenant in self.tenants.values():
                for user in tenant.users.values():
                    if user.id == key or user.upn == key:
                        return user
        raise KeyError(f"no fake user {who!r}")

    def folder_path(self, user: FakeUser | str, folder_id: str) -> str:
        """The display path of a folder below the root, e.g. "Inbox/Projects"."""
        owner = self.user(user)
        names = []
        folder = owner.folders[folder_id]
        while folder.id != owner.root_id:
            names.append(folder.display_name)
            folder = owner.folders[folder.parent_id]
        return "/".join(reversed(names))

    def folder_id(self, user: FakeUser | str, path: str) -> str:
        """The id of an existing folder by path ("Inbox/Projects", case-insensitive)."""
        owner = self.user(user)
        current = owner.root_id
        for name in [part for part in path.split("/") if part]:
            match = [
                f for f in owner.folders.values() if f.parent_id == current and f.display_name.lower() == name.lower()
            ]
            if not match:
                raise KeyError(f"no folder {path!r} in {owner.upn}")
            current = match[0].id
        return current

    def add_folder(self, user: FakeUser | str, path: str) -> str:
        """Create the folders of `path` that do not exist yet (nested); the id of the last one."""
        owner = self.user(user)
        if not owner.mailbox:
            raise ValueError(f"{owner.upn} has no mailbox")
        with self.lock:
            current = owner.root_id
            for name in [part for part in path.split("/") if part]:
                match = [
                    f
                    for f in owner.folders.values()
                    if f.parent_id == current and f.display_name.lower() == name.lower()
                ]
                if match:
                    current = match[0].id
                    continue
                folder = Folder(graph_id("AQMk"), current, name, None, self._next_seq())
                owner.folders[folder.id] = folder
                current = folder.id
            return current

    def add_message(
        self, user: FakeUser | str, folder_path: str, mime_bytes: bytes, received: dt.datetime | None = None
    ) -> str:
        """A message delivered into a folder (created if missing); its Graph id. Notifies subscribers."""
        owner = self.user(user)
        folder = self.add_folder(owner, folder_path)
        with self.lock:
            seq = self._next_seq()
            when = received or now()
            when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
            message = Message(graph_id("AAMk"), mime_bytes, when, folder, [(seq, folder)])
            owner.messages[message.id] = message
        self._notify(owner, message.id, "created", None, folder)
        return message.id

    def move_message(self, user: FakeUser | str, message_id: str, folder_path: str) -> str:
        """Move a message to another folder (created if missing). Graph keeps the id on v1.0 moves here."""
        owner = self.user(user)
        destination = self.add_folder(owner, folder_path)
        with self.lock:
            message = owner.messages[message_id]
            source = message.folder_id
            message.folder_id = destination
            message.history.append((self._next_seq(), destination))
            message.change_key = b64url(secrets.token_bytes(12))
        self._notify(owner, message_id, "updated", source, destination)
        return message_id

    def delete_message(self, user: FakeUser | str, message_id: str) -> None:
        """Hard-delete a message (purged from the mailbox)."""
        owner = self.user(user)
        with self.lock:
            message = owner.messages[message_id]
            source = message.folder_id
            message.folder_id = None
            message.history.append((self._next_seq(), None))
        self._notify(owner, message_id, "deleted", source, None)

    def add_event(self, user: FakeUser | str, event: dict[str, Any]) -> str:
        """An event in the user's calendar; missing fields get Graph-like defaults. Its id."""
        owner = self.user(user)
        start = event.get("start") or {"dateTime": iso(now()).removesuffix("Z"), "timeZone": "UTC"}
        end = event.get("end") or start
        with self.lock:
            item = {
                "id": graph_id("AAMkEv"),
                "createdDateTime": iso(now()),
                "lastModifiedDateTime": iso(now()),
                "changeKey": b64url(secrets.token_bytes(12)),
                "iCalUId": "040000008200E00074C5B7101A82E008" + secrets.token_hex(28).upper(),
                "subject": "",
                "bodyPreview": "",
                "body": {"contentType": "text", "content": ""},
                "isAllDay": False,
                "isCancelled": False,
                "showAs": "busy",
                "type": "singleInstance",
                "location": {"displayName": ""},
                "organizer": {"emailAddress": {"name": owner.display_name, "address": owner.mail}},
                "attendees": [],
                **event,
                "start": start,
                "end": end,
            }
            owner.events[item["id"]] = item
            return str(item["id"])

    def add_contact(self, user: FakeUser | str, contact: dict[str, Any]) -> str:
        """A contact in the user's default contacts folder; its id."""
        owner = self.user(user)
        with self.lock:
            item = {
                "id": graph_id("AAMkCt"),
                "createdDateTime": iso(now()),
                "lastModifiedDateTime": iso(now()),
                "changeKey": b64url(secrets.token_bytes(12)),
                "displayName": "",
                "givenName": "",
                "surname": "",
                "emailAddresses": [],
                "businessPhones": [],
                "mobilePhone": None,
                "companyName": None,
                **contact,
            }
            owner.contacts[item["id"]] = item
            return str(item["id"])

    # --- Exchange Online's IMAP (app-only XOAUTH2) -------------------------------------

    def grant_mailbox(self, client_id: str, address: str) -> None:
        """`Add-MailboxPermission -User <service principal> -AccessRights FullAccess`: the app may
        open this mailbox over IMAP (with IMAP.AccessAsApp among its roles)."""
        with self.lock:
            granted = self.imap_mailboxes.setdefault(client_id.lower(), [])
            if address.lower() not in granted:
                granted.append(address.lower())

    def revoke_mailbox(self, client_id: str, address: str) -> None:
        with self.lock:
            granted = self.imap_mailboxes.get(client_id.lower(), [])
            if address.lower() in granted:
                granted.remove(address.lower())

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        """RFC 7662 token introspection for an IMAP server (Dovecot's oauth2 passdb, `introspection_mode = post`).

        Active only for a token this fake issued (signature, expiry) for
        Exchange (`aud` https://outlook.office365.com) to an app of a known
        directory that holds IMAP.AccessAsApp and was granted a mailbox; the
        `username` is that mailbox (Dovecot compares it with the XOAUTH2 user).
        An app granted several mailboxes is answered with its first: the
        introspection request does not say which one the client asked for.
        """
        try:
            claims = jwt.decode(
                form.get("token", ""),
                self.signing_key.public_key(),
                algorithms=["RS256"],
                audience=EXCHANGE_RESOURCE,
                options={"require": ["exp", "tid", "appid"]},
            )
        except jwt.PyJWTError:
            return {"active": False}
        with self.lock:
            app = self.apps.get(str(claims["appid"]))
            granted = list(self.imap_mailboxes.get(str(claims["appid"]), []))
        if app is None or app.tenant_id != claims["tid"] or "IMAP.AccessAsApp" not in (claims.get("roles") or []):
            return {"active": False}
        if not granted:
            return {"active": False}
        return {
            "active": True,
            "username": granted[0],
            "client_id": app.client_id,
            "scope": " ".join(claims.get("roles") or []),
            "exp": claims["exp"],
        }

    # --- test knobs and records -------------------------------------------------------

    def throttle(
        self, n: int, retry_after: int | str = 1, status: int = 429, user: FakeUser | str | None = None
    ) -> None:
        """The next n Graph requests (to `user`'s mailbox only, if given) answer `status` with Retry-After."""
        target = self.user(user).id if user is not None else None
        with self.lock:
            self._throttles.append((n, target, status, str(retry_after)))

    def drop(self, n: int) -> None:
        """The next n Graph requests get no answer: the connection is closed (a network fault)."""
        with self.lock:
            self._drops += n

    def take_drop(self) -> bool:
        with self.lock:
            if self._drops > 0:
                self._drops -= 1
                return True
            return False

    def max_concurrency(self, user: FakeUser | str) -> int:
        """The most requests to this user's mailbox that were being answered at once."""
        return self._max_active.get(self.user(user).id, 0)

    def max_tenant_concurrency(self, tenant_id: str) -> int:
        """The most Graph requests of this directory (any mailbox or none) that were being answered at once."""
        return self._max_active.get(f"tenant:{tenant_id.lower()}", 0)

    def request_count(self, contains: str = "", method: str | None = None) -> int:
        """How many requests were made whose path contains `contains` (and of that method)."""
        with self.lock:
            return sum(1 for m, p in self.requests if contains in p and (method is None or m == method))

    def wait_for_notifications(self, timeout: float = 15.0) -> None:
        """Wait until every notification sent in the background has been answered (or timed out)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._notify_threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._notify_threads = [t for t in self._notify_threads if t.is_alive()]

    # --- identity platform ------------------------------------------------------------

    def tenant_named(self, name: str) -> FakeTenant:
        """A directory by id, initial domain or verified domain, else AADSTS90002."""
        key = name.lower()
        with self.lock:
            if key in self.tenants:
                return self.tenants[key]
            for tenant in self.tenants.values():
                if key == tenant.initial_domain or any(key == d and ok for d, ok in tenant.domains):
                    return tenant
        raise aad_error(
            400,
            "invalid_tenant",
            "AADSTS90002",
            f"Tenant '{name}' not found. Check to make sure you have the correct tenant ID and are signing into the "
            "correct cloud.",
        )

    def openid_configuration(self, tenant_name: str) -> dict[str, Any]:
        tenant = self.tenant_named(tenant_name)
        base = f"{self.url}/{tenant.id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{self.url}/{tenant.id}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.url}/{tenant.id}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "roles"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
        }

    def jwks(self) -> dict[str, Any]:
        numbers = self.signing_key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.signing_kid,
                    "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": b64url(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    def token(self, tenant_name: str, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.token_requests += 1
        tenant = self.tenant_named(tenant_name)
        if form.get("grant_type") == "authorization_code":
            return self.redeem_code(tenant, form)
        if form.get("grant_type") != "client_credentials":
            raise aad_error(
                400, "unsupported_grant_type", "AADSTS70003", "The app requested an unsupported grant type ''."
            )
        client_id = (form.get("client_id") or "").lower()
        app = self.apps.get(client_id)
        if app is None or app.tenant_id != tenant.id:
            raise aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                f"Application with identifier '{client_id}' was not found in the directory '{tenant.org_name}'. "
                "This can happen if the application has not been installed by the administrator of the tenant.",
            )
        scope = form.get("scope", "")
        if not any(s.endswith("/.default") for s in scope.split()):
            raise aad_error(
                400,
                "invalid_scope",
                "AADSTS1002012",
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value "
                "with /.default suffixed to the resource identifier (application ID URI).",
            )
        assertion = form.get("client_assertion")
        if not assertion or form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise aad_error(
                401,
                "invalid_client",
                "AADSTS7000216",
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            )
        self._verify_assertion(app, tenant, assertion)
        issued = int(time.time())
        claims = {
            # The resource the scope names: Graph (this fake's URL) or e.g. Exchange's IMAP.
            "aud": scope_resource(scope),
            "iss": f"https://sts.windows.net/{tenant.id}/",
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.token_lifetime,
            "aio": b64url(secrets.token_bytes(24)),
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "appidacr": "2",  # 2: a certificate authenticated the client
            "idp": f"https://sts.windows.net/{tenant.id}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "rh": b64url(secrets.token_bytes(16)),
            "roles": sorted(app.roles),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "tid": tenant.id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": self.signing_kid})
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }

    def _verify_assertion(self, app: FakeApp, tenant: FakeTenant, assertion: str) -> None:
        def refuse(code: str, text: str) -> Reply:
            return aad_error(401, "invalid_client", code, text)

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise refuse("AADSTS50027", "JWT token is invalid or malformed.") from None
        if header.get("alg") != "RS256":
            raise refuse(
                "AADSTS5002730", f"Invalid JWT token. Unsupported key for the signing algorithm {header.get('alg')}."
            )
        x5t = header.get("x5t")
        # Compared as bytes: msal pads its base64url x5t, others do not; Azure accepts both.
        certificate = app.certificates.get(b64url(x5t_bytes(str(x5t)))) if x5t else None
        if certificate is None:
            raise refuse(
                "AADSTS700027",
                f"The certificate with identifier used to sign the client assertion is not registered on application. "
                f"[Reason - The key was not found., Thumbprint of key used by client: '{x5t}', Please visit the Azure "
                "Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
                f"'{app.client_id}'.]",
            )
        if not (certificate.not_valid_before_utc <= now() < certificate.not_valid_after_utc):
            raise refuse(
                "AADSTS700027", "Client assertion contains an invalid signature. [Reason - The key used is expired.]"
            )
        audience = f"{self.url}/{tenant.id}/oauth2/v2.0/token"
        try:
            claims = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]  # an RSA key: checked by the algorithm
                algorithms=["RS256"],
                audience=[audience, f"{self.url}/{tenant.id}/oauth2/token", f"{self.url}/{tenant.id}/v2.0"],
                options={"require": ["exp", "aud", "iss", "sub"]},
                leeway=300,  # Microsoft's clock skew allowance
            )
        except jwt.InvalidSignatureError:
            raise refuse(
                "AADSTS700027",
                "Client assertion failed signature validation. [Reason - The key was found but the signature does not "
                "match.]",
            ) from None
        except jwt.ExpiredSignatureError:
            raise refuse("AADSTS700024", "Client assertion is not within its valid time range.") from None
        except jwt.InvalidAudienceError:
            raise refuse(
                "AADSTS700021", f"Client assertion audience claim does not match Realm issuer. Expected {audience}."
            ) from None
        except jwt.PyJWTError as exc:
            raise refuse("AADSTS50027", f"JWT token is invalid or malformed: {exc}.") from None
        if str(claims.get("iss", "")).lower() != app.client_id or str(claims.get("sub", "")).lower() != app.client_id:
            raise refuse(
                "AADSTS700023",
                "Client assertion application identifier doesn't match 'client_id' parameter. Review the "
                "documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/"
                "active-directory-certificate-credentials .",
            )

    # --- identity platform: the sign-in of a person (authorization code with PKCE) ----------

    def authorize(self, tenant_name: str, params: dict[str, str], chosen: str | None) -> Reply:
        """GET: the sign-in page; POST (`chosen` account): a code, redirected to the app."""
        tenant = self.tenant_named(tenant_name)
        client_id = (params.get("client_id") or "").lower()
        app = self.apps.get(client_id)
        if app is None or app.tenant_id != tenant.id:
            return self.error_page(
                "AADSTS700016",
                f"Application with identifier '{client_id}' was not found in the directory '{tenant.org_name}'.",
            )
        redirect_uri = params.get("redirect_uri") or ""
        if redirect_uri not in app.redirect_uris:
            return self.error_page(
                "AADSTS50011",
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                f"configured for the application '{client_id}'.",
            )
        state = params.get("state")

        def back(**answer: str) -> Reply:
            query = {**answer, **({"state": state} if state is not None else {})}
            return Reply(302, None, {"Location": f"{redirect_uri}?{urlencode(query)}"})

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="AADSTS700054: response_type 'code'.")
        challenge = params.get("code_challenge") or ""
        if not challenge or params.get("code_challenge_method") != "S256":
            return back(
                error="invalid_request",
                error_description="AADSTS9002325: Proof Key for Code Exchange is required (S256).",
            )
        if "openid" not in (params.get("scope") or "").split():
            return back(error="invalid_request", error_description="AADSTS900144: scope must include openid.")
        if chosen is None:
            return self.signin_page(tenant, params)
        try:
            user = self.user(chosen)
        except KeyError:
            return self.signin_page(tenant, params, error="We couldn't find an account with that username.")
        home = self.tenants[user.tenant_id]
        if user.tenant_id != tenant.id and not self.cross_tenant_tokens:
            return self.error_page(
                "AADSTS50020",
                f"User account '{user.upn}' from identity provider 'https://sts.windows.net/{home.id}/' does not "
                f"exist in tenant '{tenant.org_name}' and cannot access the application '{client_id}'.",
            )
        code = AuthCode(
            code=b64url(secrets.token_bytes(48)),
            client_id=client_id,
            redirect_uri=redirect_uri,
            challenge=challenge,
            nonce=params.get("nonce") or "",
            scope=params.get("scope") or "",
            user_id=user.id,
            tenant_id=home.id,
            expires=time.time() + 600,
        )
        with self.lock:
            self.codes[code.code] = code
        return back(code=code.code, session_state=str(uuid.uuid4()))

    def signin_page(self, tenant: FakeTenant, params: dict[str, str], error: str = "") -> Reply:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "account"
        )
        hint = html.escape(params.get("login_hint") or "")
        page = (
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Sign in to your account</title></head>"
            f"<body><h1>Sign in</h1><p id=org>{html.escape(tenant.org_name)}</p>"
            f"{f'<p id=error role=alert>{html.escape(error)}</p>' if error else ''}"
            f"<form method=post>{hidden}<label for=account>Email, phone, or Skype</label>"
            f'<input id=account name=account type=email value="{hint}">'
            "<button type=submit id=idSIButton9>Sign in</button></form></body></html>"
        )
        return Reply(200, page.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8"})

    @staticmethod
    def error_page(code: str, text: str) -> Reply:
        page = (
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Sign in to your account</title></head>"
            f"<body><h1>Sorry, but we're having trouble signing you in.</h1><p id=error>{code}: "
            f"{html.escape(text)}</p></body></html>"
        )
        return Reply(400, page.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8"})

    def redeem_code(self, tenant: FakeTenant, form: dict[str, str]) -> dict[str, Any]:
        """The token endpoint's authorization_code grant: the code once, PKCE, the certificate assertion."""
        client_id = (form.get("client_id") or "").lower()
        app = self.apps.get(client_id)
        if app is None or app.tenant_id != tenant.id:
            raise aad_error(400, "unauthorized_client", "AADSTS700016", f"Application '{client_id}' was not found.")
        assertion = form.get("client_assertion")
        if not assertion or form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise aad_error(
                401,
                "invalid_client",
                "AADSTS7000218",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        self._verify_assertion(app, tenant, assertion)
        with self.lock:
            code = self.codes.get(form.get("code") or "")
            if code is None or code.used or code.expires < time.time() or code.client_id != client_id:
                raise aad_error(
                    400,
                    "invalid_grant",
                    "AADSTS70008",
                    "The provided authorization code or refresh token has expired due to inactivity or was "
                    "already redeemed.",
                )
            code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            raise aad_error(
                400, "invalid_grant", "AADSTS50148", "The redirect_uri does not match the one of the authorization."
            )
        verifier = form.get("code_verifier") or ""
        if b64url(hashlib.sha256(verifier.encode("ascii")).digest()) != code.challenge:
            raise aad_error(
                400,
                "invalid_grant",
                "AADSTS501481",
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
        return self._user_tokens(app, code)

    def _user_tokens(self, app: FakeApp, code: AuthCode) -> dict[str, Any]:
        user = self.user(code.user_id)
        issued = int(time.time())
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{self.url}/{code.tenant_id}/v2.0",
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.token_lifetime,
            "name": user.display_name,
            "nonce": code.nonce,
            "oid": user.id,
            "preferred_username": user.upn,
            "rh": b64url(secrets.token_bytes(16)),
            "sub": b64url(hashlib.sha256(f"{user.id}:{app.client_id}".encode()).digest()),
            "tid": code.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "2.0",
        }
        if "email" in code.scope.split() and user.mail:
            claims["email"] = user.mail
        with self.lock:
            self.id_tokens.append(claims)
        id_token = jwt.encode(
            claims, self.id_token_key or self.signing_key, algorithm="RS256", headers={"kid": self.signing_kid}
        )
        access = jwt.encode(
            {**claims, "aud": "00000003-0000-0000-c000-000000000000", "scp": "email openid profile User.Read"},
            self.signing_key,
            algorithm="RS256",
            headers={"kid": self.signing_kid},
        )
        client_info = b64url(json.dumps({"uid": user.id, "utid": code.tenant_id}).encode())
        return {
            "token_type": "Bearer",
            "scope": "email openid profile https://graph.microsoft.com/User.Read",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": access,
            "refresh_token": b64url(secrets.token_bytes(64)),
            "id_token": id_token,
            "client_info": client_info,
        }

    # --- Graph: authentication, throttling, concurrency -----------------------------------

    def authenticate(self, headers: Any) -> tuple[FakeTenant, FakeApp, set[str]]:
        value = headers.get("Authorization") or ""
        if not value.startswith("Bearer "):
            raise graph_error(
                401, "InvalidAuthenticationToken", "Access token is empty.", {"WWW-Authenticate": 'Bearer realm=""'}
            )
        try:
            claims = jwt.decode(
                value.removeprefix("Bearer "),
                self.signing_key.public_key(),
                algorithms=["RS256"],
                audience=self.url,
                options={"require": ["exp", "tid", "appid"]},
            )
        except jwt.ExpiredSignatureError:
            raise graph_error(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            ) from None
        except jwt.PyJWTError as exc:
            raise graph_error(401, "InvalidAuthenticationToken", f"Access token validation failure. {exc}.") from None
        with self.lock:
            tenant = self.tenants.get(str(claims["tid"]))
            app = self.apps.get(str(claims["appid"]))
        if tenant is None or app is None or app.tenant_id != tenant.id:
            raise graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid tenant.")
        return tenant, app, set(claims.get("roles") or [])

    def throttled(self, user_id: str | None) -> Reply | None:
        with self.lock:
            for index, (remaining, target, status, retry_after) in enumerate(self._throttles):
                if target is None or target == user_id:
                    if remaining <= 1:
                        self._throttles.pop(index)
                    else:
                        self._throttles[index] = (remaining - 1, target, status, retry_after)
                    code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                    text = (
                        "Application is over its MailboxConcurrency limit."
                        if status == 429
                        else "The service is temporarily unavailable. Please retry later."
                    )
                    return graph_error(status, code, text, {"Retry-After": retry_after})
        return None

    def enter(self, tenant_id: str, user_id: str | None) -> None:
        with self.lock:
            for key in (f"tenant:{tenant_id}", user_id):
                if key is not None:
                    self._active[key] = self._active.get(key, 0) + 1
                    self._max_active[key] = max(self._max_active.get(key, 0), self._active[key])

    def leave(self, tenant_id: str, user_id: str | None) -> None:
        with self.lock:
            for key in (f"tenant:{tenant_id}", user_id):
                if key is not None:
                    self._active[key] -= 1

    # --- Graph: routing -------------------------------------------------------------------

    def graph(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> Reply:
        tenant, app, roles = self.authenticate(headers)
        parts = [unquote(p) for p in path.split("/") if p][1:]  # after "v1.0"
        user = self._user_in(tenant, parts[1]) if len(parts) >= 2 and parts[0].lower() == "users" else None
        throttled = self.throttled(user.id if user else None)
        if throttled is not None:
            raise throttled
        self.enter(tenant.id, user.id if user else None)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._route(method, parts, query, headers, body, tenant, app, roles, user)
        finally:
            self.leave(tenant.id, user.id if user else None)

    def _user_in(self, tenant: FakeTenant, key: str) -> FakeUser:
        needle = key.lower()
        with self.lock:
            for user in tenant.users.values():
                if user.id == needle or user.upn == needle:
                    return user
        raise graph_error(
            404,
            "Request_ResourceNotFound",
            f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
        )

    @staticmethod
    def need(roles: set[str], kind: str) -> None:
        if not roles & ROLES_FOR[kind]:
            if kind in ("organization", "domains", "users"):
                raise graph_error(
                    403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
                )
            raise graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _route(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        headers: Any,
        body: Any,
        tenant: FakeTenant,
        app: FakeApp,
        roles: set[str],
        user: FakeUser | None,
    ) -> Reply:
        head = parts[0].lower() if parts else ""
        if head == "organization" and method == "GET":
            self.need(roles, "organization")
            return Reply(
                200, {"@odata.context": f"{self.url}/v1.0/$metadata#organization", "value": [self._org(tenant)]}
            )
        if head == "domains" and method == "GET":
            self.need(roles, "domains")
            return Reply(200, {"@odata.context": f"{self.url}/v1.0/$metadata#domains", "value": self._domains(tenant)})
        if head == "subscriptions":
            return self._subscriptions(method, parts, body, tenant, app, roles)
        if head == "users" and method == "GET":
            if user is None:
                self.need(roles, "users")
                users = sorted(tenant.users.values(), key=lambda u: u.upn)
                wanted = re.fullmatch(r"mail eq '((?:[^']|'')*)'", query.get("$filter", "").strip())
                if wanted:
                    address = wanted.group(1).replace("''", "'").lower()
                    users = [u for u in users if (u.mail or "").lower() == address]
                    return Reply(200, {"value": [self._select(self._user_json(u), query) for u in users]})
                return self._paged("users", [self._user_json(u) for u in users], query, headers, "/v1.0/users", 100)
            if parts[2:3] == ["memberOf"]:
                return self._member_of(query, headers, roles, tenant, user)
            return self._user_routes(parts[2:], query, headers, roles, user)
        raise graph_error(400, "BadRequest", f"Resource not found for the segment '{parts[0] if parts else ''}'.")

    def _user_routes(
        self, rest: list[str], query: dict[str, str], headers: Any, roles: set[str], user: FakeUser
    ) -> Reply:
        base = f"/v1.0/users/{user.id}"
        if not rest:
            self.need(roles, "users")
            return Reply(200, self._select(self._user_json(user), query))
        head = rest[0]
        if head == "mailboxSettings":
            self.need(roles, "mailboxSettings")
            self._has_mailbox(user)
            return Reply(200, self._mailbox_settings(user))
        if head in ("mailFolders", "messages"):
            self.need(roles, "mail")
            self._has_mailbox(user)
            return self._mail(rest, query, headers, user, base)
        if head in ("events", "calendarView", "calendar"):
            self.need(roles, "events")
            self._has_mailbox(user)
            return self._events(rest, query, headers, user, base)
        if head == "contacts":
            self.need(roles, "contacts")
            self._has_mailbox(user)
            items = sorted(user.contacts.values(), key=lambda c: str(c["createdDateTime"]))
            return self._paged("contacts", items, query, headers, f"{base}/contacts", 10)
        raise graph_error(400, "BadRequest", f"Resource not found for the segment '{head}'.")

    def _member_of(
        self, query: dict[str, str], headers: Any, roles: set[str], tenant: FakeTenant, user: FakeUser
    ) -> Reply:
        if not roles & {"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"}:
            raise graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        items = []
        for group in sorted(tenant.groups.values(), key=lambda g: g.display_name):
            if user.id in group.members:
                item: dict[str, Any] = {
                    "@odata.type": f"#microsoft.graph.{group.kind}",
                    "id": group.id,
                    "displayName": group.display_name,
                }
                if group.kind == "directoryRole":
                    item["roleTemplateId"] = group.role_template_id
                items.append(item)
        return self._paged("memberOf", items, query, headers, f"/v1.0/users/{user.id}/memberOf", 100)

    @staticmethod
    def _has_mailbox(user: FakeUser) -> None:
        if not user.mailbox:
            raise graph_error(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )

    # --- Graph: directory -----------------------------------------------------------------

    def _org(self, tenant: FakeTenant) -> dict[str, Any]:
        verified = [(tenant.initial_domain, True)] + [(d, ok) for d, ok in tenant.domains if ok]
        default = next((d for d, ok in tenant.domains if ok), tenant.initial_domain)
        return {
            "id": tenant.id,
            "displayName": tenant.org_name,
            "tenantType": "AAD",
            "countryLetterCode": "US",
            "createdDateTime": "2020-01-01T00:00:00Z",
            "verifiedDomains": [
                {
                    "name": name,
                    "isDefault": name == default,
                    "isInitial": name == tenant.initial_domain,
                    "type": "Managed",
                    "capabilities": "Email, OfficeCommunicationsOnline",
                }
                for name, _ in verified
            ],
        }

    def _domains(self, tenant: FakeTenant) -> list[dict[str, Any]]:
        default = next((d for d, ok in tenant.domains if ok), tenant.initial_domain)
        rows = [(tenant.initial_domain, True)] + list(tenant.domains)
        return [
            {
                "id": name,
                "authenticationType": "Managed",
                "availabilityStatus": None,
                "isAdminManaged": True,
                "isDefault": name == default,
                "isInitial": name == tenant.initial_domain,
                "isRoot": True,
                "isVerified": verified,
                "supportedServices": ["Email", "OfficeCommunicationsOnline"] if verified else [],
                "passwordValidityPeriodInDays": 2147483647,
                "passwordNotificationWindowInDays": 14,
            }
            for name, verified in rows
        ]

    @staticmethod
    def _user_json(user: FakeUser) -> dict[str, Any]:
        return {
            "id": user.id,
            "businessPhones": [],
            "displayName": user.display_name,
            "givenName": None,
            "jobTitle": user.job_title,
            "department": user.department,
            "mail": user.mail,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "surname": None,
            "userPrincipalName": user.upn,
            "accountEnabled": user.account_enabled,
            "userType": "Member",
            "proxyAddresses": list(user.proxy_addresses),
        }

    @staticmethod
    def _mailbox_settings(user: FakeUser) -> dict[str, Any]:
        return {
            "@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{user.id}')/mailboxSettings",
            "archiveFolder": "",
            "timeZone": "UTC",
            "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
            "dateFormat": "M/d/yyyy",
            "timeFormat": "h:mm tt",
            "userPurpose": user.mailbox,
            "automaticRepliesSetting": {"status": "disabled"},
            "language": {"locale": "en-US", "displayName": "English (United States)"},
            "workingHours": {"daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"]},
        }

    @staticmethod
    def _select(item: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        fields = [f.strip() for f in query.get("$select", "").split(",") if f.strip()]
        if not fields:
            return item
        return {k: v for k, v in item.items() if k in fields or k == "id" or k.startswith("@")}

    # --- Graph: paging ---------------------------------------------------------------------

    @staticmethod
    def page_size(query: dict[str, str], headers: Any, default: int, maximum: int = 999) -> int:
        prefer = headers.get("Prefer") or ""
        match = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        size = query.get("$top") or (match.group(1) if match else "")
        if size:
            if not size.isdigit() or int(size) < 1:
                raise graph_error(400, "BadRequest", f"Invalid page size '{size}'.")
            return min(int(size), maximum)
        return default

    def _cursor(self, cursor: Cursor) -> str:
        token = b64url(secrets.token_bytes(24))
        with self.lock:
            self.cursors[token] = cursor
        return token

    def _paged(
        self, kind: str, items: list[Any], query: dict[str, str], headers: Any, base_path: str, default: int
    ) -> Reply:
        token = query.get("$skiptoken")
        if token:
            cursor = self.cursors.get(token)
            if cursor is None or cursor.kind != kind:
                raise graph_error(400, "BadRequest", "The skip token is invalid or expired.")
        else:
            cursor = Cursor(
                kind, [self._select(i, query) for i in items], 0, self.page_size(query, headers, default), base_path
            )
        chunk = cursor.items[cursor.offset : cursor.offset + cursor.page_size]
        body: dict[str, Any] = {"@odata.context": f"{self.url}/v1.0/$metadata#{kind}", "value": chunk}
        rest = cursor.offset + cursor.page_size
        if rest < len(cursor.items):
            following = Cursor(kind, cursor.items, rest, cursor.page_size, base_path)
            body["@odata.nextLink"] = f"{self.url}{base_path}?$skiptoken={self._cursor(following)}"
        return Reply(200, body)

    # --- Graph: mail ------------------------------------------------------------------------

    def _folder(self, user: FakeUser, key: str) -> Folder:
        with self.lock:
            folder = user.folders.get(key)
            if folder is None:
                folder = next((f for f in user.folders.values() if f.well_known == key.lower()), None)
            if folder is None or folder.id in user.removed_folders:
                raise graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            return folder

    def _folder_json(self, user: FakeUser, folder: Folder) -> dict[str, Any]:
        children = [f for f in user.folders.values() if f.parent_id == folder.id and f.id not in user.removed_folders]
        inside = [m for m in user.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.display_name,
            "parentFolderId": folder.parent_id or None,
            "childFolderCount": len(children),
            "unreadItemCount": 0,
            "totalItemCount": len(inside),
            "sizeInBytes": sum(len(m.mime) for m in inside),
            "isHidden": False,
        }

    def _message_json(self, user: FakeUser, message: Message) -> dict[str, Any]:
        parsed = email.message_from_bytes(message.mime, policy=email.policy.compat32)

        def addresses(name: str) -> list[dict[str, Any]]:
            pairs = email.utils.getaddresses([str(v) for v in parsed.get_all(name, [])])
            return [{"emailAddress": {"name": n or a, "address": a}} for n, a in pairs if a]

        sender = addresses("From")
        sent = parsed.get("Date")
        try:
            sent_at = email.utils.parsedate_to_datetime(sent) if sent else message.received
        except (TypeError, ValueError):
            sent_at = message.received
        if sent_at.tzinfo is None:
            sent_at = sent_at.replace(tzinfo=dt.UTC)
        return {
            "@odata.etag": f'W/"{message.change_key}"',
            "id": message.id,
            "createdDateTime": iso(message.received),
            "lastModifiedDateTime": iso(message.received),
            "changeKey": message.change_key,
            "receivedDateTime": iso(message.received),
            "sentDateTime": iso(sent_at),
            "hasAttachments": parsed.is_multipart() and "mixed" in parsed.get_content_type(),
            "internetMessageId": (parsed.get("Message-ID") or "").strip() or None,
            "subject": str(parsed.get("Subject") or ""),
            "importance": "normal",
            "parentFolderId": message.folder_id,
            "conversationId": b64url(hashlib.sha256(str(parsed.get("Subject")).encode()).digest()[:24]),
            "isRead": False,
            "isDraft": False,
            "from": sender[0] if sender else None,
            "sender": sender[0] if sender else None,
            "toRecipients": addresses("To"),
            "ccRecipients": addresses("Cc"),
            "bccRecipients": addresses("Bcc"),
        }

    def _mail(self, rest: list[str], query: dict[str, str], headers: Any, user: FakeUser, base: str) -> Reply:
        if rest[0] == "messages":
            if len(rest) == 1:
                items = [self._message_json(user, m) for m in self._live_messages(user)]
                return self._paged("messages", items, query, headers, f"{base}/messages", 10)
            message = user.messages.get(rest[1])
            if message is None or message.folder_id is None:
                raise graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if len(rest) == 3 and rest[2] == "$value":
                return Reply(200, message.mime, {"Content-Type": "text/plain"})
            if len(rest) == 2:
                return Reply(200, self._select(self._message_json(user, message), query))
            raise graph_error(400, "BadRequest", f"Resource not found for the segment '{rest[2]}'.")
        # mailFolders
        if len(rest) == 1:
            top = [f for f in user.folders.values() if f.parent_id == user.root_id and f.id not in user.removed_folders]
            return self._paged(
                "mailFolders", [self._folder_json(user, f) for f in top], query, headers, f"{base}/mailFolders", 10
            )
        if rest[1] == "delta":
            return self._folders_delta(query, headers, user, base)
        folder = self._folder(user, rest[1])
        if len(rest) == 2:
            return Reply(200, self._folder_json(user, folder))
        if rest[2] == "childFolders":
            children = [
                f for f in user.folders.values() if f.parent_id == folder.id and f.id not in user.removed_folders
            ]
            return self._paged(
                "mailFolders",
                [self._folder_json(user, f) for f in children],
                query,
                headers,
                f"{base}/mailFolders/{folder.id}/childFolders",
                10,
            )
        if rest[2] == "messages":
            if len(rest) == 4 and rest[3] == "delta":
                return self._messages_delta(query, headers, user, folder, base)
            items = [self._message_json(user, m) for m in self._live_messages(user) if m.folder_id == folder.id]
            return self._paged("messages", items, query, headers, f"{base}/mailFolders/{folder.id}/messages", 10)
        raise graph_error(400, "BadRequest", f"Resource not found for the segment '{rest[2]}'.")

    @staticmethod
    def _live_messages(user: FakeUser) -> list[Message]:
        return sorted((m for m in user.messages.values() if m.folder_id is not None), key=lambda m: m.received)

    def _delta_page(self, cursor: Cursor) -> Reply:
        chunk = cursor.items[cursor.offset : cursor.offset + cursor.page_size]
        body: dict[str, Any] = {"@odata.context": f"{self.url}/v1.0/$metadata#Collection", "value": chunk}
        rest = cursor.offset + cursor.page_size
        if rest < len(cursor.items):
            following = Cursor(cursor.kind, cursor.items, rest, cursor.page_size, cursor.base_path, cursor.extra)
            body["@odata.nextLink"] = f"{self.url}{cursor.base_path}?$skiptoken={self._cursor(following)}"
        else:
            state = Cursor(cursor.kind, [], 0, cursor.page_size, cursor.base_path, {**cursor.extra, "delta": True})
            body["@odata.deltaLink"] = f"{self.url}{cursor.base_path}?$deltatoken={self._cursor(state)}"
        return Reply(200, body)

    def _resume(self, query: dict[str, str], kind: str) -> Cursor | None:
        token = query.get("$skiptoken") or query.get("$deltatoken")
        if not token:
            return None
        cursor = self.cursors.get(token)
        if cursor is None or cursor.kind != kind:
            raise graph_error(
                410,
                "SyncStateNotFound",
                "The sync state generation is not found. Resync from scratch with a new query.",
            )
        return cursor

    def _folders_delta(self, query: dict[str, str], headers: Any, user: FakeUser, base: str) -> Reply:
        path = f"{base}/mailFolders/delta"
        cursor = self._resume(query, f"folders:{user.id}")
        if cursor is not None and not cursor.extra.get("delta"):
            return self._delta_page(cursor)
        with self.lock:
            since = cursor.extra["seq"] if cursor is not None else 0
            seq_now = self.current_seq
            items: list[dict[str, Any]] = [
                self._folder_json(user, f)
                for f in user.folders.values()
                if f.id != user.root_id and f.id not in user.removed_folders and f.changed_seq > since
            ]
            if cursor is not None:
                items += [
                    {"id": fid, "@removed": {"reason": "deleted"}}
                    for fid, when in user.removed_folders.items()
                    if when > since
                ]
        size = self.page_size(query, headers, 100) if cursor is None else cursor.page_size
        return self._delta_page(Cursor(f"folders:{user.id}", items, 0, size, path, {"seq": seq_now}))

    def _messages_delta(self, query: dict[str, str], headers: Any, user: FakeUser, folder: Folder, base: str) -> Reply:
        path = f"{base}/mailFolders/{folder.id}/messages/delta"
        kind = f"messages:{user.id}:{folder.id}"
        cursor = self._resume(query, kind)
        if cursor is not None and not cursor.extra.get("delta"):
            return self._delta_page(cursor)
        since_received = cursor.extra.get("since") if cursor is not None else self._received_filter(query)
        if cursor is not None:
            # The deltaLink keeps the first round's $select, as Graph's state token does.
            query = {**query, "$select": cursor.extra.get("select", "")}
        with self.lock:
            since = cursor.extra["seq"] if cursor is not None else 0
            seq_now = self.current_seq
            items: list[dict[str, Any]] = []
            for message in sorted(user.messages.values(), key=lambda m: m.received):
                if since_received is not None and message.received < since_received:
                    continue
                was_here = message.folder_at(since) == folder.id
                is_here = message.folder_id == folder.id
                if is_here and not was_here:
                    items.append(self._select(self._message_json(user, message), query))
                elif was_here and not is_here:
                    items.append({"id": message.id, "@removed": {"reason": "deleted"}})
        size = self.page_size(query, headers, 10) if cursor is None else cursor.page_size
        extra = {"seq": seq_now, "since": since_received, "select": query.get("$select", "")}
        return self._delta_page(Cursor(kind, items, 0, size, path, extra))

    @staticmethod
    def _received_filter(query: dict[str, str]) -> dt.datetime | None:
        text = query.get("$filter", "").strip()
        if not text:
            return None
        match = re.fullmatch(r"receivedDateTime\s+(ge|gt)\s+(\S+)", text)
        if not match:
            raise graph_error(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
        try:
            return parse_iso(match.group(2))
        except ValueError:
            raise graph_error(400, "BadRequest", f"Invalid filter value '{match.group(2)}'.") from None

    # --- Graph: calendar ------------------------------------------------------------------

    def _events(self, rest: list[str], query: dict[str, str], headers: Any, user: FakeUser, base: str) -> Reply:
        events = sorted(user.events.values(), key=lambda e: str(e["start"]["dateTime"]))
        if rest[0] == "calendarView":
            if not query.get("$skiptoken"):
                start, end = query.get("startDateTime"), query.get("endDateTime")
                if not start or not end:
                    raise graph_error(
                        400,
                        "ErrorInvalidParameter",
                        "This request requires a time window specified by the query string parameters StartDateTime "
                        "and EndDateTime.",
                    )
                window = (parse_iso(start), parse_iso(end))
                events = [
                    e
                    for e in events
                    if parse_iso(e["start"]["dateTime"]) < window[1] and parse_iso(e["end"]["dateTime"]) >= window[0]
                ]
            return self._paged("events", events, query, headers, f"{base}/calendarView", 10)
        if len(rest) == 1:
            return self._paged("events", events, query, headers, f"{base}/events", 10)
        event = user.events.get(rest[1])
        if event is None:
            raise graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return Reply(200, event)

    # --- Graph: subscriptions ---------------------------------------------------------------

    def _subscriptions(
        self, method: str, parts: list[str], body: Any, tenant: FakeTenant, app: FakeApp, roles: set[str]
    ) -> Reply:
        if method == "GET" and len(parts) == 1:
            with self.lock:
                mine = [s.as_json() for s in self.subscriptions.values() if s.client_id == app.client_id]
            return Reply(200, {"value": mine})
        if method == "POST" and len(parts) == 1:
            return Reply(201, self._create_subscription(body, tenant, app, roles).as_json())
        with self.lock:
            subscription = self.subscriptions.get(parts[1]) if len(parts) >= 2 else None
        if subscription is None or subscription.client_id != app.client_id:
            raise graph_error(404, "ResourceNotFound", "The object was not found.")
        if method == "GET":
            return Reply(200, subscription.as_json())
        if method == "PATCH" and len(parts) == 2:
            if not isinstance(body, dict) or "expirationDateTime" not in body:
                raise graph_error(400, "BadRequest", "expirationDateTime is required.")
            subscription.expiration = self._expiration(body["expirationDateTime"])
            return Reply(200, subscription.as_json())
        if method == "POST" and len(parts) == 3 and parts[2] == "reauthorize":
            return Reply(204)
        if method == "DELETE" and len(parts) == 2:
            with self.lock:
                self.subscriptions.pop(subscription.id, None)
            return Reply(204)
        raise graph_error(405, "MethodNotAllowed", f"{method} is not allowed here.")

    @staticmethod
    def _expiration(value: Any) -> dt.datetime:
        try:
            moment = parse_iso(str(value))
        except ValueError:
            raise graph_error(400, "BadRequest", f"Invalid expirationDateTime '{value}'.") from None
        if moment <= now():
            raise graph_error(400, "ExtensionError", "Subscription expiration can only be in the future.")
        if moment > now() + dt.timedelta(minutes=MAX_MAIL_SUBSCRIPTION_MINUTES):
            raise graph_error(
                400,
                "ExtensionError",
                f"Subscription expiration can only be {MAX_MAIL_SUBSCRIPTION_MINUTES} minutes in the future.",
            )
        return moment

    def _create_subscription(self, body: Any, tenant: FakeTenant, app: FakeApp, roles: set[str]) -> Subscription:
        if not isinstance(body, dict):
            raise graph_error(400, "BadRequest", "A subscription object is required.")
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(name):
                raise graph_error(400, "BadRequest", f"The '{name}' property is required.")
        change_types = {c.strip() for c in str(body["changeType"]).split(",")}
        if not change_types <= {"created", "updated", "deleted"}:
            raise graph_error(400, "BadRequest", f"Invalid changeType '{body['changeType']}'.")
        resource = str(body["resource"]).strip("/")
        match = re.fullmatch(
            r"users/([^/]+)/(?:messages|mailFolders\('([^']+)'\)/messages|mailFolders/([^/]+)/messages)",
            resource,
            flags=re.IGNORECASE,
        )
        if not match:
            raise graph_error(400, "InvalidRequest", f"Resource '{resource}' is not supported by this fake.")
        self.need(roles, "mail")
        user = self._user_in(tenant, match.group(1))
        self._has_mailbox(user)
        folder_key = match.group(2) or match.group(3)
        folder_id = self._folder(user, folder_key).id if folder_key else None
        for url_name in ("notificationUrl", "lifecycleNotificationUrl"):
            if url_name in body and body[url_name]:
                self._validate_endpoint(str(body[url_name]))
        subscription = Subscription(
            id=str(uuid.uuid4()),
            tenant_id=tenant.id,
            client_id=app.client_id,
            resource=str(body["resource"]),
            change_types=change_types,
            notification_url=str(body["notificationUrl"]),
            lifecycle_url=str(body["lifecycleNotificationUrl"]) if body.get("lifecycleNotificationUrl") else None,
            client_state=str(body["clientState"]) if body.get("clientState") else None,
            expiration=self._expiration(body["expirationDateTime"]),
            user_id=user.id,
            folder_id=folder_id,
        )
        with self.lock:
            self.subscriptions[subscription.id] = subscription
        return subscription

    def _validate_endpoint(self, url: str) -> None:
        """Graph's validation request: the token must come back as text/plain, 200, within 10 s."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        separator = "&" if "?" in url else "?"
        started = time.monotonic()
        status = 0
        ok = False
        try:
            with requests.Session() as session:
                session.trust_env = False
                response = session.post(
                    f"{url}{separator}validationToken={quote(token)}",
                    data=b"",
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                    timeout=VALIDATION_TIMEOUT,
                    verify=str(self.ca_path),
                    allow_redirects=False,
                )
            status = response.status_code
            ok = (
                status == 200
                and response.text == token
                and response.headers.get("Content-Type", "").split(";")[0].strip() == "text/plain"
            )
        except requests.RequestException:
            ok = False
        elapsed = time.monotonic() - started
        with self.lock:
            self.notification_log.append(NotificationAnswer(url, "validation", status, elapsed, None))
        if not ok or elapsed > VALIDATION_TIMEOUT:
            raise graph_error(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to "
                "validation request.",
            )

    # --- notifications ---------------------------------------------------------------------

    def _notify(
        self, user: FakeUser, message_id: str, change: str, source: str | None, destination: str | None
    ) -> None:
        with self.lock:
            subscriptions = [s for s in self.subscriptions.values() if s.user_id == user.id]
        for subscription in subscriptions:
            if subscription.folder_id is None:
                kind = change
            elif subscription.folder_id == destination and subscription.folder_id != source:
                kind = "created"
            elif subscription.folder_id == source and subscription.folder_id != destination:
                kind = "deleted"
            else:
                continue
            if kind not in subscription.change_types:
                continue
            resource = f"Users/{user.id}/Messages/{message_id}"
            payload = {
                "value": [
                    {
                        "subscriptionId": subscription.id,
                        "subscriptionExpirationDateTime": iso(subscription.expiration),
                        "changeType": kind,
                        "resource": resource,
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.Message",
                            "@odata.id": resource,
                            "@odata.etag": f'W/"{b64url(secrets.token_bytes(12))}"',
                            "id": message_id,
                        },
                        "clientState": subscription.client_state,
                        "tenantId": subscription.tenant_id,
                    }
                ]
            }
            self._deliver(subscription.notification_url, "change", payload, subscription.id)

    def send_lifecycle(self, subscription_id: str, event: str) -> int:
        """A lifecycle notification ("reauthorizationRequired", "subscriptionRemoved" or "missed"); its answer's status.

        Sent to lifecycleNotificationUrl (or the notificationUrl when none
        was given, as Graph does for `missed`). `subscriptionRemoved` also
        removes the subscription, as Graph has by then.
        """
        if event not in ("reauthorizationRequired", "subscriptionRemoved", "missed"):
            raise ValueError(f"unknown lifecycle event {event!r}")
        with self.lock:
            subscription = self.subscriptions[subscription_id]
            if event == "subscriptionRemoved":
                self.subscriptions.pop(subscription_id)
        payload = {
            "value": [
                {
                    "subscriptionId": subscription.id,
                    "subscriptionExpirationDateTime": iso(subscription.expiration),
                    "tenantId": subscription.tenant_id,
                    "clientState": subscription.client_state,
                    "lifecycleEvent": event,
                }
            ]
        }
        url = subscription.lifecycle_url or subscription.notification_url
        return self._deliver(url, "lifecycle", payload, subscription.id, force_sync=True)

    def _deliver(
        self, url: str, kind: str, payload: dict[str, Any], subscription_id: str, force_sync: bool = False
    ) -> int:
        def post() -> int:
            started = time.monotonic()
            status = 0
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    response = session.post(
                        url, json=payload, timeout=NOTIFICATION_TIMEOUT, verify=str(self.ca_path), allow_redirects=False
                    )
                    status = response.status_code
            except requests.RequestException:
                status = 0
            elapsed = time.monotonic() - started
            if elapsed > NOTIFICATION_TIMEOUT:
                status = 0
            with self.lock:
                self.notification_responses.append(status)
                self.notification_log.append(NotificationAnswer(url, kind, status, elapsed, subscription_id))
            return status

        if self.notifications_async and not force_sync:
            thread = threading.Thread(target=post, name="ms-fake-notify", daemon=True)
            self._notify_threads.append(thread)
            thread.start()
            return 0
        return post()


# --- the HTTP server ------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, fake: MicrosoftFake, context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.fake = fake
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the connection's own thread, so one slow client cannot stall accept().
        try:
            request.settimeout(30)
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the
    # second waits for the client's delayed ACK, about 40 ms a request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        with fake.lock:
            fake.requests.append((method, self.path))
            # Real Graph gives a message a new id when it moves, unless the client asks for
            # immutable ids: requests for mailbox items without that preference are noted.
            if re.match(r"/v1\.0/users/[^/]+/(messages|mailFolders|events|calendarView|contacts)", split.path) and (
                'IdType="ImmutableId"' not in (self.headers.get("Prefer") or "")
            ):
                fake.mutable_id_requests.append(self.path)
        if split.path.startswith("/v1.0/") and fake.take_drop():
            self.close_connection = True
            return
        try:
            reply = self._dispatch(fake, method, split.path, query, raw)
        except Reply as answer:
            reply = answer
        except Exception as exc:  # a bug in the fake must show in the test, not hang it
            reply = graph_error(500, "FakeError", f"{type(exc).__name__}: {exc}")
        self._send(reply)

    def _dispatch(self, fake: MicrosoftFake, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] in ("v1.0", "beta"):
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise graph_error(400, "BadRequest", "Unable to read JSON request payload.") from None
            return fake.graph(method, path, query, self.headers, body)
        if parts == ["common", "discovery", "instance"]:
            host = urlsplit(fake.url).netloc
            return Reply(
                200,
                {
                    "tenant_discovery_endpoint": f"{fake.url}/common/v2.0/.well-known/openid-configuration",
                    "api-version": "1.1",
                    "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
                },
            )
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"] and method == "GET":
            return Reply(200, fake.openid_configuration(parts[0]))
        if len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"] and method == "GET":
            fake.tenant_named(parts[0])
            return Reply(200, fake.jwks())
        if parts == ["imap", "introspect"] and method == "POST":
            form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            return Reply(200, fake.introspect(form), {"Content-Type": "application/json"})
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "authorize"] and method in ("GET", "POST"):
            if method == "GET":
                return fake.authorize(parts[0], query, None)
            form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
            return fake.authorize(parts[0], form, form.get("account", ""))
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and method == "POST":
            form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            return Reply(200, fake.token(parts[0], form))
        raise Reply(404, {"error": "not_found", "error_description": f"No route for {method} {path}"})

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            data = reply.body
            content_type = reply.headers.get("Content-Type", "application/octet-stream")
        elif reply.body is None:
            data = b""
            content_type = ""
        else:
            data = json.dumps(reply.body).encode("utf-8")
            content_type = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            if name != "Content-Type":
                self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", str(uuid.uuid4()))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass
