"""Sign-in with Microsoft Entra ID: OpenID Connect's authorization-code flow with PKCE.

The tenant's Microsoft 365 connection supplies the directory (tenant) ID, the
app (client) ID and the certificate: msal's `ConfidentialClientApplication`
starts the flow (`initiate_auth_code_flow`: state, nonce and a PKCE
verifier) and redeems the code (`acquire_token_by_auth_code_flow`), the
client authenticated by a certificate-signed assertion, never a secret.

msal does not validate the ID token (msal#911): here PyJWT does, with the
keys of the JWKS the discovery document names (signature, audience = our
client ID, expiry) and the nonce of this flow.  Then ours: the token's `tid`
must be the configured directory, its issuer the discovery document's for
that directory; the address's domain is checked against the tenant's
verified domains by `signin.actions`.  The person's groups, directory roles,
department, job title and proxy addresses come from Microsoft Graph
(app-only, `m365.graph`).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
import msal
import requests
from django.conf import settings

from infra.secrets import SecretUnreadable
from m365 import access as m365_access
from m365.certificates import current_certificate, private_key_pem
from m365.directory import smtp_addresses
from m365.graph import MICROSOFT_LOGIN_HOSTS, Graph, GraphError, new_session
from m365.models import Connection
from tenants.models import Tenant

from .rules import Attributes, Membership

log = logging.getLogger(__name__)

SCOPES = ["email"]  # msal adds openid, profile and offline_access
TIMEOUT = 30.0
LEEWAY = 120  # seconds of clock skew allowed on exp/iat/nbf (msal's own figure)
CALLBACK_PATH = "/accounts/microsoft/callback"
NOT_THIS_FLOW = "This sign-in was not started here (or it was used already). Start again."
NOT_THIS_ANSWER = "Microsoft's answer did not belong to this sign-in."
USER_FIELDS = "id,displayName,mail,userPrincipalName,proxyAddresses,department,jobTitle"
MEMBER_FIELDS = "id,displayName,roleTemplateId"


class SigninRefused(Exception):
    """The sign-in cannot go on; `reason` is a short code for the audit log, the message is for the person."""

    def __init__(self, reason: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail


def unreachable(exc: Exception) -> SigninRefused:
    return SigninRefused("authority_unreachable", "Microsoft sign-in could not be reached.", error=str(exc))


def callback_url() -> str:
    """The Web redirect URI to register on the app: on SITE_ROOT, never the request's Host."""
    return f"{settings.SITE_ROOT}{CALLBACK_PATH}"


def usable_connection(tenant: Tenant) -> Connection:
    """The tenant's connection if it can sign people in (IDs and a valid certificate), else SigninRefused."""
    connection = m365_access.connection(tenant)
    if not connection.is_configured or current_certificate(connection) is None:
        raise SigninRefused(
            "not_configured",
            "Sign-in with Microsoft is not set up completely for your organization. Ask an owner to sign in with "
            "their password and check the Microsoft 365 connection.",
        )
    return connection


def application(connection: Connection, session: requests.Session) -> msal.ConfidentialClientApplication:
    certificate = current_certificate(connection)
    if certificate is None:
        raise SigninRefused("no_certificate", "The Microsoft 365 connection has no valid certificate.")
    try:
        key_pem = private_key_pem(certificate)
    except SecretUnreadable:
        raise SigninRefused("secret_unreadable", "The connection's certificate cannot be used.") from None
    login = settings.ARCHIVA_MS_LOGIN_URL.rstrip("/")
    try:
        return msal.ConfidentialClientApplication(
            str(connection.client_id),
            authority=f"{login}/{connection.directory_id}",
            client_credential={
                "private_key": key_pem,
                "thumbprint": certificate.thumbprint.upper(),
                "public_certificate": certificate.certificate_pem,
            },
            token_cache=msal.TokenCache(),  # the person's tokens are not kept: we only sign them in
            http_client=session,
            instance_discovery=False,
            validate_authority=urlsplit(login).hostname in MICROSOFT_LOGIN_HOSTS,
            timeout=TIMEOUT,
        )
    except (ValueError, requests.RequestException) as exc:
        raise unreachable(exc) from None


def begin(tenant: Tenant, email: str, *, session: requests.Session | None = None) -> dict[str, Any]:
    """A new auth-code flow for `email` (state, nonce, PKCE verifier and the `auth_uri` to send the browser to).

    The flow holds secrets (the PKCE verifier): it goes into the server-side session only.
    """
    connection = usable_connection(tenant)
    app = application(connection, session or new_session())
    try:
        # response_mode "query" (msal warns it prefers form_post): a form_post callback is a cross-site
        # POST, on which the browser does not send our SameSite=Lax session cookie, where the flow is.
        # The code is useless without the PKCE verifier and the certificate, which never leave the server.
        flow: dict[str, Any] = app.initiate_auth_code_flow(
            SCOPES, redirect_uri=callback_url(), login_hint=email or None, response_mode="query"
        )
    except requests.RequestException as exc:
        raise unreachable(exc) from None
    return flow


@dataclass
class SignedIn:
    """Who Microsoft signed in, from a validated ID token."""

    directory_id: str
    object_id: str
    email: str
    name: str
    claims: dict[str, Any] = field(default_factory=dict)


def finish(
    tenant: Tenant, flow: dict[str, Any], auth_response: dict[str, str], *, session: requests.Session | None = None
) -> SignedIn:
    """Redeem the code Microsoft sent back and validate the ID token; SigninRefused otherwise."""
    if auth_response.get("error"):
        raise SigninRefused(
            "microsoft_error",
            f"Microsoft did not sign you in: {auth_response.get('error_description') or auth_response['error']}",
            error=auth_response["error"],
        )
    connection = usable_connection(tenant)
    http = session or new_session()
    app = application(connection, http)
    try:
        result = app.acquire_token_by_auth_code_flow(flow, auth_response, scopes=SCOPES)
    except ValueError as exc:  # msal: state mismatch, or a response that is not this flow's
        raise SigninRefused("state_mismatch", NOT_THIS_FLOW, error=str(exc)) from None
    except RuntimeError as exc:  # msal: the ID token's nonce is not this flow's
        raise SigninRefused("nonce_mismatch", NOT_THIS_ANSWER, error=str(exc)) from None
    except requests.RequestException as exc:
        raise unreachable(exc) from None
    if "id_token" not in result:
        description = str(result.get("error_description") or result.get("error") or "no ID token")
        raise SigninRefused(
            "token_refused",
            "Microsoft refused to complete the sign-in: " + description.splitlines()[0],
            error=str(result.get("error") or ""),
        )
    claims = verify_id_token(str(result["id_token"]), connection, nonce=str(flow.get("nonce") or ""), session=http)
    email = str(claims.get("email") or claims.get("preferred_username") or "").strip().lower()
    return SignedIn(
        directory_id=str(claims["tid"]).lower(),
        object_id=str(claims.get("oid") or "").lower(),
        email=email,
        name=str(claims.get("name") or ""),
        claims=claims,
    )


# --- the ID token ----------------------------------------------------------------------------

_jwks_lock = threading.Lock()
_jwks_clients: dict[tuple[str, str], jwt.PyJWKClient] = {}


def jwks_client(uri: str) -> jwt.PyJWKClient:
    """A JWKS client for `uri` trusting what ARCHIVA_MS_CA_BUNDLE says, one per process (it caches the keys)."""
    bundle = settings.ARCHIVA_MS_CA_BUNDLE or ""
    with _jwks_lock:
        client = _jwks_clients.get((uri, bundle))
        if client is None:
            context = ssl.create_default_context(cafile=bundle or None)
            client = _jwks_clients[(uri, bundle)] = jwt.PyJWKClient(uri, timeout=TIMEOUT, ssl_context=context)
        return client


def discovery(connection: Connection, session: requests.Session) -> dict[str, Any]:
    """The directory's OpenID configuration (issuer, jwks_uri), from its v2.0 discovery document."""
    url = f"{settings.ARCHIVA_MS_LOGIN_URL.rstrip('/')}/{connection.directory_id}/v2.0/.well-known/openid-configuration"
    try:
        response = session.get(url, timeout=TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SigninRefused("discovery_failed", "Microsoft sign-in could not be reached.", error=str(exc)) from None
    if not isinstance(document, dict) or not document.get("issuer") or not document.get("jwks_uri"):
        raise SigninRefused("discovery_failed", "Microsoft's sign-in configuration could not be read.")
    return document


def nonce_hash(nonce: str) -> str:
    """What msal sends as the nonce (and Microsoft echoes in the ID token): SHA-256 hex of the flow's nonce."""
    return hashlib.sha256(nonce.encode("ascii")).hexdigest()


def verify_id_token(token: str, connection: Connection, *, nonce: str, session: requests.Session) -> dict[str, Any]:
    """The ID token's claims once PyJWT checked signature, audience and times, and we the nonce, tid and issuer."""
    document = discovery(connection, session)
    try:
        key = jwks_client(str(document["jwks_uri"])).get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience=str(connection.client_id),
            options={"require": ["exp", "iat", "aud", "iss", "sub", "tid", "nonce"]},
            leeway=LEEWAY,
        )
    except jwt.PyJWTError as exc:
        raise SigninRefused("invalid_id_token", "Microsoft's answer could not be verified.", error=str(exc)) from None
    if not nonce or claims["nonce"] != nonce_hash(nonce):
        raise SigninRefused("nonce_mismatch", NOT_THIS_ANSWER)
    directory = str(claims["tid"]).lower()
    if directory != str(connection.directory_id).lower():
        raise SigninRefused(
            "other_directory",
            "You signed in with an account of another Microsoft directory than your organization's.",
            tid=directory,
            expected=str(connection.directory_id),
        )
    issuer = str(document["issuer"]).replace("{tenantid}", directory)
    if claims["iss"] != issuer:
        raise SigninRefused("wrong_issuer", "Microsoft's answer came from an unexpected issuer.", iss=claims["iss"])
    return claims


# --- the directory (Graph) ------------------------------------------------------------------


@dataclass
class DirectoryUser:
    """One user as Graph lists them: what the rules look at, and the addresses that become aliases."""

    object_id: str
    upn: str
    mail: str
    display_name: str
    addresses: list[str]
    attributes: Attributes


def directory_user(connection: Connection, who: str, *, graph: Graph | None = None) -> DirectoryUser:
    """The user `who` (object id or UPN, else primary address) and their memberships; GraphError if Graph refuses."""
    graph = graph or Graph(connection)
    try:
        user = graph.get(f"/users/{quote(who, safe='@')}", {"$select": USER_FIELDS})
    except GraphError as exc:
        if exc.status != 404 or "@" not in who:
            raise
        quoted = who.replace("'", "''")  # OData string literal
        found = graph.get("/users", {"$filter": f"mail eq '{quoted}'", "$select": USER_FIELDS})
        values = found.get("value") or []
        if not values:
            raise
        user = values[0]
    object_id = str(user.get("id") or "")
    member_of: list[Membership] = []
    for page in graph.pages(f"/users/{object_id}/memberOf", {"$select": MEMBER_FIELDS}):
        for item in page.get("value") or []:
            kind = str(item.get("@odata.type") or "").rpartition(".")[2]
            if kind in ("group", "directoryRole"):
                member_of.append(
                    Membership(
                        kind=kind,
                        id=str(item.get("id") or ""),
                        display_name=str(item.get("displayName") or ""),
                        role_template_id=str(item.get("roleTemplateId") or ""),
                    )
                )
    return DirectoryUser(
        object_id=object_id,
        upn=str(user.get("userPrincipalName") or "").lower(),
        mail=str(user.get("mail") or "").lower(),
        display_name=str(user.get("displayName") or ""),
        addresses=smtp_addresses(user),
        attributes=Attributes(
            member_of=member_of,
            department=str(user.get("department") or ""),
            job_title=str(user.get("jobTitle") or ""),
        ),
    )


def lookup(tenant: Tenant, email: str) -> DirectoryUser:
    """The Lookup button: a user's attributes by address (UPN or primary address); GraphError or SigninRefused."""
    connection = usable_connection(tenant)
    return directory_user(connection, email.strip().lower())
