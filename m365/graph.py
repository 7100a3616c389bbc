"""The Microsoft Graph client every part of the connection uses.

An app-only token comes from msal with the connection's certificate (a
signed client assertion, no secret).  Requests go through one
`requests.Session` whose `verify` is set explicitly (`ARCHIVA_MS_CA_BUNDLE`
or the system's trust) and which ignores the environment: `REQUESTS_CA_BUNDLE`
would otherwise silently replace a session's default trust.

Throttling is Exchange's to decide: 429/503/504 are retried after the
`Retry-After` Microsoft names (bounded, with backoff, never a tight loop);
at most 4 requests run at once per mailbox (Exchange's limit) and
`ARCHIVA_MS_TENANT_CONCURRENCY` per directory, shared by every thread of the
process.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import jwt
import msal
import requests
import requests.adapters
from django.conf import settings
from django.utils import timezone

from infra.secrets import SecretUnreadable

from .certificates import current_certificate, private_key_pem
from .models import Connection

log = logging.getLogger(__name__)
T = TypeVar("T")

API_VERSION = "v1.0"
MAILBOX_CONCURRENCY = 4  # Exchange Online's limit of concurrent requests per mailbox
MAX_ATTEMPTS = 6  # a throttled request is tried this many times in all
MAX_WAIT = 120.0  # seconds: a longer Retry-After is capped (and the attempts bound the total)
TIMEOUT = (10.0, 120.0)  # connect, read
# Immutable ids: a message keeps its id when it moves between folders, so what the
# import and the folder sync record of it agree (Graph's default id changes on a move).
IMMUTABLE_IDS = 'IdType="ImmutableId"'
MICROSOFT_LOGIN_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us", "login.partner.microsoftonline.cn"}
RETRYABLE = {429, 503, 504}


class Sink(Protocol):
    """Where a download goes: a file, or m365.spool.Spool."""

    def write(self, data: bytes, /) -> int: ...


class GraphError(Exception):
    """Graph or the identity platform refused, or could not be reached.

    `status` is the HTTP status (0 when no answer came), `code` Graph's or
    AAD's error code (`Authorization_RequestDenied`, `invalid_client`, ...)
    and `message` says what failed in words an admin can act on.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})" if status else f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message


# --- process-wide limits and token caches ------------------------------------

_limits_lock = threading.Lock()
_mailbox_slots: dict[tuple[str, str], threading.BoundedSemaphore] = {}
_tenant_slots: dict[str, threading.BoundedSemaphore] = {}
_token_caches: dict[tuple[str, ...], msal.TokenCache] = {}


def _slot(table: dict[Any, threading.BoundedSemaphore], key: Any, size: int) -> threading.BoundedSemaphore:
    with _limits_lock:
        semaphore = table.get(key)
        if semaphore is None:
            semaphore = table[key] = threading.BoundedSemaphore(size)
        return semaphore


def mailbox_of(url: str) -> str | None:
    """The mailbox a Graph URL addresses (`/users/{id or upn}/…`), lower-cased; None for tenant-wide calls.

    The limit is kept per this key, so callers address a mailbox one way
    only: by its Graph id (what `Mailbox.graph_id` stores), never by id here
    and by UPN there.
    """
    parts = [unquote(part) for part in urlsplit(url).path.split("/") if part]
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "users":
            return parts[index + 1].lower()
    return None


def retry_after_seconds(value: str | None, attempt: int) -> float:
    """How long to wait before the next attempt: Retry-After (seconds or an HTTP date), else backoff."""
    backoff = min(MAX_WAIT, 2.0**attempt)
    if not value:
        return backoff
    value = value.strip()
    if value.isdigit():
        return min(MAX_WAIT, max(1.0, float(value)))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return backoff
    if when.tzinfo is None:
        return backoff
    return min(MAX_WAIT, max(1.0, (when - timezone.now()).total_seconds()))


def transient(method: str, exc: requests.RequestException) -> bool:
    """Whether a failed request is worth repeating: a reading request that met a broken connection or a timeout.

    Never a TLS verification failure (it will not heal by itself), never a
    request that changes something (it may have been carried out).
    """
    if method not in ("GET", "HEAD") or isinstance(exc, requests.exceptions.SSLError):
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def new_session() -> requests.Session:
    """A session that trusts exactly what the settings say, whatever the environment holds.

    Its connection pool holds as many connections as the tenant may use at
    once, so that concurrent threads reuse them instead of reconnecting.
    """
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=settings.ARCHIVA_MS_TENANT_CONCURRENCY + 2)
    session.mount("https://", adapter)
    configure_session(session)
    return session


def configure_session(session: requests.Session) -> None:
    # trust_env=False: REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE and proxies from the
    # environment are ignored; verify is always set, never False.
    session.trust_env = False
    session.verify = settings.ARCHIVA_MS_CA_BUNDLE or True


def graph_error(method: str, url: str, response: requests.Response) -> GraphError:
    """A GraphError from Graph's `{"error": {"code", "message"}}` answer (or whatever came)."""
    code, message = f"HTTP{response.status_code}", response.reason or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or code)
        message = str(body["error"].get("message") or message)
    path = urlsplit(url).path
    return GraphError(response.status_code, code, f"Microsoft Graph refused {method} {path}: {message}")


class Graph:
    """App-only access to Microsoft Graph for one connection."""

    def __init__(self, connection: Connection, *, session: requests.Session | None = None) -> None:
        if not connection.is_configured:
            raise GraphError(0, "not_configured", "the connection has no directory (tenant) ID or application ID")
        certificate = current_certificate(connection)
        if certificate is None:
            raise GraphError(0, "no_certificate", "the connection has no valid certificate: create one and upload it")
        self.connection = connection
        self.certificate = certificate
        self.directory = str(connection.directory_id)
        self.client_id = str(connection.client_id)
        self.base = settings.ARCHIVA_MS_GRAPH_URL.rstrip("/")
        self.login = settings.ARCHIVA_MS_LOGIN_URL.rstrip("/")
        self.session = session or new_session()
        configure_session(self.session)
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_lock = threading.Lock()

    # --- tokens ---------------------------------------------------------------

    def _application(self) -> msal.ConfidentialClientApplication:
        with self._app_lock:
            if self._app is None:
                self._app = self._new_application()
            return self._app

    def _new_application(self) -> msal.ConfidentialClientApplication:
        key = (self.login, self.directory, self.client_id, self.certificate.thumbprint)
        with _limits_lock:
            cache = _token_caches.setdefault(key, msal.TokenCache())
        authority = f"{self.login}/{self.directory}"
        try:
            key_pem = private_key_pem(self.certificate)
        except SecretUnreadable as exc:
            raise GraphError(0, "secret_unreadable", f"the certificate's private key cannot be used: {exc}") from None
        credential = {
            "private_key": key_pem,
            "thumbprint": self.certificate.thumbprint.upper(),
            "public_certificate": self.certificate.certificate_pem,
        }
        try:
            return msal.ConfidentialClientApplication(
                self.client_id,
                authority=authority,
                client_credential=credential,
                token_cache=cache,
                http_client=self.session,
                instance_discovery=False,
                # Authority validation asks Microsoft's instance discovery, which
                # only knows Microsoft's hosts; elsewhere (tests) it is skipped.
                validate_authority=urlsplit(self.login).hostname in MICROSOFT_LOGIN_HOSTS,
                timeout=TIMEOUT[1],
            )
        except (ValueError, requests.RequestException) as exc:
            raise GraphError(
                0, "authority_unreachable", f"the Microsoft sign-in authority {authority} cannot be used: {exc}"
            ) from None

    def token(self, scope: str | None = None) -> str:
        """An app-only access token for Graph, or for another resource's `scope`
        (e.g. Exchange's IMAP, `https://outlook.office365.com/.default`); msal
        caches it until shortly before it expires."""
        try:
            result = self._application().acquire_token_for_client(scopes=[scope or f"{self.base}/.default"])
        except requests.RequestException as exc:
            raise GraphError(0, "unreachable", f"Microsoft sign-in could not be reached: {exc}") from None
        if "access_token" not in result:
            code = str(result.get("error") or "token_refused")
            description = str(result.get("error_description") or "no access token in the answer")
            first_line = description.splitlines()[0] if description else description
            raise GraphError(401, code, f"Microsoft sign-in refused the app's certificate credential: {first_line}")
        return str(result["access_token"])

    def roles(self) -> set[str]:
        """The application permissions the token carries (its `roles` claim)."""
        # Not verified here: the token is ours, fresh from Microsoft over
        # TLS we verified, and Graph (not we) is the audience that checks it.
        claims = jwt.decode(self.token(), options={"verify_signature": False})
        roles = claims.get("roles") or []
        return {str(role) for role in roles}

    def _forget_token(self) -> None:
        self._application().remove_tokens_for_client()

    # --- requests -------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        """An absolute Graph URL; absolute URLs (next/delta links) must be Graph's own."""
        if path_or_url.startswith(("https://", "http://")):
            if not (path_or_url == self.base or path_or_url.startswith(self.base + "/")):
                # The token must never go to another host, whatever a link says.
                raise GraphError(
                    0, "foreign_url", f"refusing to send the Graph token to {urlsplit(path_or_url).netloc}"
                )
            return path_or_url
        path = path_or_url if path_or_url.startswith("/") else "/" + path_or_url
        if path.startswith(("/v1.0/", "/beta/")):
            return self.base + path
        return f"{self.base}/{API_VERSION}{path}"

    @contextmanager
    def _slots(self, url: str) -> Iterator[None]:
        """Hold a place under the per-mailbox and per-directory limits (mailbox first: no slot hoarding)."""
        with ExitStack() as stack:
            mailbox = mailbox_of(url)
            if mailbox is not None:
                stack.enter_context(_slot(_mailbox_slots, (self.directory, mailbox), MAILBOX_CONCURRENCY))
            stack.enter_context(_slot(_tenant_slots, self.directory, settings.ARCHIVA_MS_TENANT_CONCURRENCY))
            yield

    def _send(self, method: str, url: str, consume: Callable[[requests.Response], T], **kwargs: Any) -> T:
        """One request, retried on throttling and once with a fresh token after a 401.

        `consume` reads the successful answer while the slots are still held
        (a download counts against the mailbox's limit until its last byte);
        no slot is held while waiting for a retry.
        """
        renewed = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
            preferences = self.session.headers.get("Prefer")
            headers["Prefer"] = f"{IMMUTABLE_IDS}, {preferences}" if preferences else IMMUTABLE_IDS
            with self._slots(url):
                try:
                    response = self.session.request(
                        method, url, headers=headers, timeout=TIMEOUT, stream=True, allow_redirects=False, **kwargs
                    )
                except requests.RequestException as exc:
                    if not transient(method, exc) or attempt == MAX_ATTEMPTS:
                        raise GraphError(
                            0,
                            "unreachable",
                            f"Microsoft Graph could not be reached ({method} {urlsplit(url).path}): {exc}",
                        ) from None
                    response = None
                if response is not None:
                    with response:
                        status = response.status_code
                        if status < 300:
                            return consume(response)
                        if status == 401 and not renewed:
                            pass
                        elif status not in RETRYABLE or attempt == MAX_ATTEMPTS:
                            raise graph_error(method, url, response)
            if response is None:  # a broken connection or a timeout of a reading request
                wait = retry_after_seconds(None, attempt)
                log.info("graph unreachable: %s %s, retrying in %.1f s", method, urlsplit(url).path, wait)
                time.sleep(wait)
                continue
            if status == 401:
                # A revoked or otherwise refused token: ask for a new one, once.
                renewed = True
                self._forget_token()
                continue
            wait = retry_after_seconds(response.headers.get("Retry-After"), attempt)
            log.info(
                "graph throttled: %s %s answered %s, retrying in %.1f s",
                method,
                urlsplit(url).path,
                status,
                wait,
            )
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _json(self, method: str, path_or_url: str, **kwargs: Any) -> dict[str, Any]:
        url = self.url(path_or_url)

        def parse(response: requests.Response) -> dict[str, Any]:
            if response.status_code == 204 or not response.content:
                return {}
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise GraphError(
                    response.status_code,
                    "not_json",
                    f"Microsoft Graph answered {method} {urlsplit(url).path} with something other than a JSON object",
                )
            return body

        return self._send(method, url, parse, **kwargs)

    def get(self, path_or_url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._json("GET", path_or_url, params=params)

    def pages(self, path_or_url: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Each page's JSON, following `@odata.nextLink`; the last page may carry `@odata.deltaLink`."""
        page = self.get(path_or_url, params)
        yield page
        seen: set[str] = set()
        while isinstance(link := page.get("@odata.nextLink"), str):
            if link in seen:
                # A server bug, but it must not become an endless loop.
                raise GraphError(
                    0, "link_loop", f"Microsoft Graph sent the same next link twice: {urlsplit(link).path}"
                )
            seen.add(link)
            page = self.get(link)
            yield page

    def download(self, path: str, sink: Sink, max_in_memory: int = 1024 * 1024) -> int:
        """The body of `path` (e.g. a message's `$value`) streamed into sink; the number of bytes.

        At most `max_in_memory` bytes are held at a time: large messages go
        through to the sink (a spool file) as they arrive.
        """
        url = self.url(path)
        chunk_size = max(4096, max_in_memory)

        def stream(response: requests.Response) -> int:
            written = 0
            try:
                for chunk in response.iter_content(chunk_size=chunk_size):
                    sink.write(chunk)
                    written += len(chunk)
            except requests.RequestException as exc:
                raise GraphError(0, "interrupted", f"the download of {urlsplit(url).path} broke off: {exc}") from None
            return written

        return self._send("GET", url, stream)

    def post(self, path: str, json: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", path, json=json)

    def patch(self, path: str, json: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", path, json=json)

    def delete(self, path: str) -> None:
        self._json("DELETE", path)
