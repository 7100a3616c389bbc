"""The Microsoft fake speaks the real protocol, and the Graph client speaks it back.

The token endpoint verifies the client assertion against the certificate
uploaded to the app (x5t) and refuses anything else; Graph checks the
token and the roles, pages with @odata.nextLink, answers delta queries with
@odata.deltaLink and changes since, throttles on demand.  The product's
Graph client (m365.graph) gets its token through msal with the
connection's certificate, honours Retry-After and keeps at most 4 requests
per mailbox in flight.
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import threading
import time
import uuid

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from m365.certificates import Subject, build, create_certificate, thumbprint_of
from m365.graph import Graph, GraphError, mailbox_of, retry_after_seconds
from tests.ms_fake import CLIENT_ASSERTION_TYPE, MicrosoftFake, b64url
from tests.ms_support import ALL_ROLES, connect

pytestmark = pytest.mark.django_db


def mime(subject: str, message_id: str | None = None) -> bytes:
    return (
        f"From: Alice <alice@contoso.com>\r\nTo: bob@contoso.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id or uuid.uuid4()}@contoso.com>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
        f"Body of {subject}\r\n"
    ).encode()


def fake_session(fake: MicrosoftFake) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(fake.ca_path)
    return session


def assertion(fake: MicrosoftFake, tenant_id: str, client_id: str, key, x5t: str, **claims) -> str:
    """A client assertion made by hand, as msal makes it, to try what msal would never send."""
    now = int(time.time())
    body = {
        "aud": f"{fake.url}/{tenant_id}/oauth2/v2.0/token",
        "iss": client_id,
        "sub": client_id,
        "exp": now + 600,
        "nbf": now,
        "iat": now,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"x5t": x5t})


def request_token(fake: MicrosoftFake, tenant_id: str, client_id: str, client_assertion: str) -> requests.Response:
    return fake_session(fake).post(
        f"{fake.url}/{tenant_id}/oauth2/v2.0/token",
        data={
            "client_id": client_id,
            "grant_type": "client_credentials",
            "scope": f"{fake.url}/.default",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_assertion,
        },
    )


# --- the token endpoint -------------------------------------------------------------


def test_a_certificate_uploaded_to_the_app_gets_a_token_with_the_granted_roles(ms_fake, org):
    connection = connect(ms_fake, org.tenant, roles={"User.Read.All", "Mail.Read"})
    graph = Graph(connection)

    claims = jwt.decode(graph.token(), options={"verify_signature": False})

    assert graph.roles() == {"User.Read.All", "Mail.Read"}
    assert claims["tid"] == str(connection.directory_id)
    assert claims["appid"] == str(connection.client_id)
    assert ms_fake.token_requests == 1, "msal caches the token: roles() asked for no second one"


def test_a_certificate_never_uploaded_is_refused_with_aadsts700027(ms_fake, org):
    connection = connect(ms_fake, org.tenant, upload=False)

    with pytest.raises(GraphError) as refused:
        Graph(connection).get("/organization")

    assert refused.value.code == "invalid_client"
    assert "AADSTS700027" in refused.value.message
    assert "not registered" in refused.value.message
    assert ms_fake.request_count("/v1.0/") == 0, "no Graph request without a token"


def test_an_assertion_with_the_right_thumbprint_but_another_key_fails_signature_validation(ms_fake):
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    ms_fake.add_tenant(tenant_id, "Contoso", [("contoso.com", True)])
    ms_fake.register_app(tenant_id, client_id, roles={"Mail.Read"})
    cert, key_pem = build(Subject(common_name="Archiva"))
    x5t = ms_fake.upload_certificate(client_id, cert.public_bytes(serialization.Encoding.PEM))
    right_key = serialization.load_pem_private_key(key_pem, password=None)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    good = request_token(ms_fake, tenant_id, client_id, assertion(ms_fake, tenant_id, client_id, right_key, x5t))
    forged = request_token(ms_fake, tenant_id, client_id, assertion(ms_fake, tenant_id, client_id, other_key, x5t))

    assert good.status_code == 200 and good.json()["token_type"] == "Bearer"
    assert x5t == b64url(bytes.fromhex(thumbprint_of(cert)))
    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_client"
    assert "AADSTS700027" in forged.json()["error_description"]
    assert "signature" in forged.json()["error_description"]


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"aud": "https://login.microsoftonline.com/other/oauth2/v2.0/token"}, "AADSTS700021"),
        ({"exp": int(time.time()) - 3600, "nbf": int(time.time()) - 7200}, "AADSTS700024"),
        ({"iss": "00000000-0000-0000-0000-000000000000"}, "AADSTS700023"),
    ],
    ids=["wrong-audience", "expired", "issuer-not-the-client"],
)
def test_a_signed_assertion_with_wrong_claims_is_refused(ms_fake, claims, code):
    tenant_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    ms_fake.add_tenant(tenant_id, "Contoso")
    ms_fake.register_app(tenant_id, client_id)
    cert, key_pem = build(Subject(common_name="Archiva"))
    x5t = ms_fake.upload_certificate(client_id, cert.public_bytes(serialization.Encoding.PEM))
    key = serialization.load_pem_private_key(key_pem, password=None)

    answer = request_token(ms_fake, tenant_id, client_id, assertion(ms_fake, tenant_id, client_id, key, x5t, **claims))

    assert answer.status_code == 401
    assert answer.json()["error_description"].startswith(code)


def test_an_unknown_directory_or_app_is_refused(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    connection.client_id = uuid.uuid4()  # an application ID typed wrong
    connection.save()

    with pytest.raises(GraphError) as refused:
        Graph(connection).token()
    assert "AADSTS700016" in refused.value.message

    connection.directory_id = uuid.uuid4()
    connection.save()
    with pytest.raises(GraphError) as unknown:
        Graph(connection).token()
    assert unknown.value.code == "authority_unreachable"
    assert str(connection.directory_id) in unknown.value.message


# --- Graph: tokens, roles, paging -----------------------------------------------------


def test_graph_refuses_requests_without_a_valid_token(ms_fake, org):
    connect(ms_fake, org.tenant)
    session = fake_session(ms_fake)

    missing = session.get(f"{ms_fake.url}/v1.0/organization")
    forged = session.get(f"{ms_fake.url}/v1.0/organization", headers={"Authorization": "Bearer e30.e30.e30"})

    assert missing.status_code == 401 and missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_an_expired_token_is_refused_by_graph(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    claims = jwt.decode(Graph(connection).token(), options={"verify_signature": False})
    expired = jwt.encode(
        {**claims, "exp": int(time.time()) - 60}, ms_fake.signing_key, algorithm="RS256", headers={"kid": "k"}
    )

    answer = fake_session(ms_fake).get(
        f"{ms_fake.url}/v1.0/organization", headers={"Authorization": f"Bearer {expired}"}
    )

    assert answer.status_code == 401 and "expired" in answer.json()["error"]["message"]


def test_a_token_graph_stops_accepting_is_replaced_once(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    graph = Graph(connection)
    graph.get("/organization")
    # Microsoft rolls its signing key: the cached token is refused from now on.
    ms_fake.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    assert graph.get("/organization")["value"]
    assert ms_fake.token_requests == 2
    assert ms_fake.request_count("/v1.0/organization") == 3


def test_a_missing_role_is_a_403_naming_the_denial(ms_fake, org):
    connection = connect(ms_fake, org.tenant, roles={"Mail.Read"})

    with pytest.raises(GraphError) as denied:
        Graph(connection).get("/users")

    assert denied.value.status == 403
    assert denied.value.code == "Authorization_RequestDenied"
    assert "GET /v1.0/users" in denied.value.message


def test_organization_and_domains_have_graphs_shapes(ms_fake, org):
    connection = connect(ms_fake, org.tenant, domains=[("contoso.com", True), ("contoso.net", False)])
    graph = Graph(connection)

    organization = graph.get("/organization")["value"][0]
    domains = {d["id"]: d for d in graph.get("/domains")["value"]}

    assert organization["displayName"] == "Contoso Ltd"
    assert {d["name"] for d in organization["verifiedDomains"]} == {"contoso.com", "contoso.onmicrosoft.com"}
    assert [d["name"] for d in organization["verifiedDomains"] if d["isInitial"]] == ["contoso.onmicrosoft.com"]
    assert domains["contoso.com"]["isVerified"] is True
    assert domains["contoso.net"]["isVerified"] is False


def test_users_are_paged_with_next_links_until_the_last(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    directory = str(connection.directory_id)
    for n in range(7):
        ms_fake.add_user(directory, f"user{n}@contoso.com", aliases=[f"u{n}@contoso.net"])
    ms_fake.add_user(directory, "nomail@contoso.com", mailbox=None)

    pages = list(Graph(connection).pages("/users", {"$top": "3", "$select": "id,userPrincipalName,proxyAddresses"}))

    assert [len(p["value"]) for p in pages] == [3, 3, 2]
    assert "@odata.nextLink" not in pages[-1]
    users = {u["userPrincipalName"]: u for p in pages for u in p["value"]}
    assert users["user3@contoso.com"]["proxyAddresses"] == ["SMTP:user3@contoso.com", "smtp:u3@contoso.net"]
    assert users["nomail@contoso.com"]["proxyAddresses"] == []
    assert set(users["user0@contoso.com"]) == {"id", "userPrincipalName", "proxyAddresses"}


def test_mailbox_settings_tell_shared_and_room_mailboxes_and_users_without_one(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    directory = str(connection.directory_id)
    shared = ms_fake.add_user(directory, "sales@contoso.com", mailbox="shared")
    room = ms_fake.add_user(directory, "room1@contoso.com", mailbox="room")
    nobody = ms_fake.add_user(directory, "guest@contoso.com", mailbox=None)
    graph = Graph(connection)

    assert graph.get(f"/users/{shared.id}/mailboxSettings")["userPurpose"] == "shared"
    assert graph.get(f"/users/{room.upn}/mailboxSettings")["userPurpose"] == "room"
    with pytest.raises(GraphError) as none:
        graph.get(f"/users/{nobody.id}/mailboxSettings")
    assert (none.value.status, none.value.code) == (404, "MailboxNotEnabledForRESTAPI")


# --- Graph: mail, delta, $value ---------------------------------------------------------


def test_message_delta_pages_then_gives_a_delta_link_that_returns_only_changes(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    ids = [ms_fake.add_message(alice, "Inbox/Projects", mime(f"m{n}")) for n in range(5)]
    graph = Graph(connection)
    folder = ms_fake.folder_id(alice, "Inbox/Projects")

    first = list(graph.pages(f"/users/{alice.id}/mailFolders/{folder}/messages/delta", {"$top": "2"}))
    assert [len(p["value"]) for p in first] == [2, 2, 1]
    assert {m["id"] for p in first for m in p["value"]} == set(ids)
    delta_link = first[-1]["@odata.deltaLink"]

    ms_fake.move_message(alice, ids[0], "Archive")
    ms_fake.delete_message(alice, ids[1])
    new = ms_fake.add_message(alice, "Inbox/Projects", mime("late"))
    moved_in = ms_fake.add_message(alice, "Inbox", mime("elsewhere"))
    ms_fake.move_message(alice, moved_in, "Inbox/Projects")
    changes = list(graph.pages(delta_link))

    items = {m["id"]: m for p in changes for m in p["value"]}
    assert set(items) == {ids[0], ids[1], new, moved_in}
    assert items[ids[0]]["@removed"] == {"reason": "deleted"} and items[ids[1]]["@removed"]
    assert items[new]["subject"] == "late" and items[moved_in]["parentFolderId"] == folder
    assert "@odata.deltaLink" in changes[-1]
    assert list(graph.pages(changes[-1]["@odata.deltaLink"]))[0]["value"] == [], "nothing changed since"


def test_folder_delta_lists_nested_folders_with_parents_and_child_counts(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    ms_fake.add_folder(alice, "Inbox/Projects/2026")
    graph = Graph(connection)

    folders = {f["displayName"]: f for p in graph.pages(f"/users/{alice.id}/mailFolders/delta") for f in p["value"]}
    inbox, projects = folders["Inbox"], folders["Projects"]
    children = graph.get(f"/users/{alice.id}/mailFolders/{inbox['id']}/childFolders")["value"]

    assert projects["parentFolderId"] == inbox["id"] and folders["2026"]["parentFolderId"] == projects["id"]
    assert inbox["childFolderCount"] == 1 and projects["childFolderCount"] == 1
    assert [c["displayName"] for c in children] == ["Projects"]


def test_a_message_downloads_as_its_mime_bytes(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    raw = mime("big") + b"x" * 300_000
    message_id = ms_fake.add_message(alice, "Inbox", raw)
    sink = io.BytesIO()

    size = Graph(connection).download(f"/users/{alice.id}/messages/{message_id}/$value", sink, max_in_memory=65536)

    assert size == len(raw) and sink.getvalue() == raw


def test_mail_needs_mail_read(ms_fake, org):
    connection = connect(ms_fake, org.tenant, roles={"User.Read.All"})
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")

    with pytest.raises(GraphError) as denied:
        Graph(connection).get(f"/users/{alice.id}/mailFolders/delta")
    assert denied.value.status == 403


def test_events_and_contacts_are_paged(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    for n in range(3):
        ms_fake.add_event(
            alice,
            {
                "subject": f"meeting {n}",
                "start": {"dateTime": f"2026-12-0{n + 1}T10:00:00"},
                "end": {"dateTime": f"2026-12-0{n + 1}T11:00:00"},
            },
        )
        ms_fake.add_contact(alice, {"displayName": f"Contact {n}", "emailAddresses": [{"address": f"c{n}@x.com"}]})
    graph = Graph(connection)

    events = [e for p in graph.pages(f"/users/{alice.id}/events", {"$top": "2"}) for e in p["value"]]
    window = graph.get(
        f"/users/{alice.id}/calendarView",
        {"startDateTime": "2026-12-02T00:00:00Z", "endDateTime": "2026-12-03T00:00:00Z"},
    )
    contacts = [c for p in graph.pages(f"/users/{alice.id}/contacts", {"$top": "2"}) for c in p["value"]]

    assert [e["subject"] for e in events] == ["meeting 0", "meeting 1", "meeting 2"]
    assert [e["subject"] for e in window["value"]] == ["meeting 1"]
    assert len(contacts) == 3


# --- throttling and concurrency ------------------------------------------------------------


def test_429_with_retry_after_is_waited_out_and_retried(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    graph = Graph(connection)
    graph.token()
    ms_fake.throttle(2, retry_after=1, status=429)

    started = time.monotonic()
    organization = graph.get("/organization")
    elapsed = time.monotonic() - started

    assert organization["value"][0]["displayName"] == "Contoso Ltd"
    assert ms_fake.request_count("/v1.0/organization") == 3
    assert elapsed >= 2.0, "each Retry-After of 1 s was honoured"


def test_503_is_retried_and_a_lasting_one_ends_in_a_clear_error(ms_fake, org, monkeypatch):
    connection = connect(ms_fake, org.tenant)
    graph = Graph(connection)
    ms_fake.throttle(1, retry_after=1, status=503)
    assert graph.get("/domains")["value"]

    monkeypatch.setattr("m365.graph.MAX_ATTEMPTS", 2)  # bounded: give up after two tries of one second
    ms_fake.throttle(5, retry_after=1, status=503)
    with pytest.raises(GraphError) as gave_up:
        graph.get("/domains")
    assert gave_up.value.status == 503 and gave_up.value.code == "ServiceUnavailable"


def test_a_dropped_connection_is_retried_for_reads_but_not_for_changes(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    graph = Graph(connection)
    graph.token()
    ms_fake.drop(1)

    assert graph.get("/organization")["value"]
    assert ms_fake.request_count("/v1.0/organization") == 2

    ms_fake.drop(1)
    with pytest.raises(GraphError) as broken:
        graph.post("/subscriptions", {"changeType": "created"})
    assert broken.value.code == "unreachable" and "POST /v1.0/subscriptions" in broken.value.message


def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert retry_after_seconds("7", attempt=1) == 7
    assert 28 <= retry_after_seconds(soon.strftime("%a, %d %b %Y %H:%M:%S GMT"), attempt=1) <= 30
    assert retry_after_seconds(None, attempt=3) == 8, "no header: exponential backoff"
    assert retry_after_seconds("0", attempt=1) == 1, "never a tight loop"
    assert retry_after_seconds("99999", attempt=1) == 120


def test_at_most_four_requests_per_mailbox_are_in_flight(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    bob = ms_fake.add_user(str(connection.directory_id), "bob@contoso.com")
    ids = [ms_fake.add_message(alice, "Inbox", mime(f"m{n}")) for n in range(12)]
    ms_fake.latency = 0.15
    graph = Graph(connection)
    graph.token()
    errors: list[Exception] = []

    def fetch(user_key: str, message_id: str | None) -> None:
        try:
            if message_id:
                graph.download(f"/users/{user_key}/messages/{message_id}/$value", io.BytesIO())
            else:
                graph.get(f"/users/{user_key}/mailFolders/inbox")
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    jobs = [(alice.id, m) for m in ids] + [(bob.id, None)] * 6
    threads = [threading.Thread(target=fetch, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert ms_fake.max_concurrency(alice) == 4
    assert 2 <= ms_fake.max_concurrency(bob) <= 4


def test_the_tenant_cap_bounds_requests_across_mailboxes(ms_fake, org, settings):
    settings.ARCHIVA_MS_TENANT_CONCURRENCY = 3
    connection = connect(ms_fake, org.tenant)
    directory = str(connection.directory_id)
    users = [ms_fake.add_user(directory, f"u{n}@contoso.com") for n in range(8)]
    ms_fake.latency = 0.15
    graph = Graph(connection)
    graph.token()

    threads = [threading.Thread(target=graph.get, args=(f"/users/{user.id}/mailFolders/inbox",)) for user in users * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert ms_fake.max_tenant_concurrency(directory) == 3
    assert ms_fake.request_count("/mailFolders/inbox") == 16


def test_mailbox_of_reads_the_user_segment():
    assert mailbox_of("https://graph.microsoft.com/v1.0/users/Alice%40Contoso.com/messages") == "alice@contoso.com"
    assert mailbox_of("/v1.0/users/ABC/mailFolders/delta?$skiptoken=x") == "abc"
    assert mailbox_of("https://graph.microsoft.com/v1.0/users?$top=5") is None


# --- trust ------------------------------------------------------------------------------


def test_requests_ca_bundle_in_the_environment_changes_nothing(ms_fake, org, monkeypatch, settings, tmp_path):
    connection = connect(ms_fake, org.tenant)
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))

    assert Graph(connection).get("/organization")["value"], "the configured bundle is used, not the environment's"

    settings.ARCHIVA_MS_CA_BUNDLE = None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ms_fake.ca_path))  # would trust the fake, if it were read
    with pytest.raises(GraphError) as untrusted:
        Graph(connection).token()
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.value.message or "certificate" in untrusted.value.message.lower()


def test_next_links_to_another_host_never_get_the_token(ms_fake, org):
    connection = connect(ms_fake, org.tenant)

    with pytest.raises(GraphError) as refused:
        Graph(connection).get("https://evil.example/v1.0/users")
    assert refused.value.code == "foreign_url"


def test_the_newest_valid_certificate_is_used(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    newer = create_certificate(connection, Subject(common_name="Archiva 2"))
    with pytest.raises(GraphError):
        Graph(connection).token()  # not uploaded to Azure yet

    ms_fake.upload_certificate(str(connection.client_id), newer.certificate_pem)
    graph = Graph(connection)
    assert graph.certificate == newer
    assert graph.token()


# --- subscriptions and notifications ----------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """A notification endpoint for the fake to call: echoes validation tokens when told to, answers 202."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
                if "validationToken" in query:
                    token = requests.utils.unquote(query["validationToken"]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    data = token if receiver.echo else b"nope"
                else:
                    receiver.bodies.append(body)
                    self.send_response(202)
                    data = b""
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/o365"


def test_a_subscription_is_created_only_after_the_validation_echo_then_notifies(ms_fake, org):
    connection = connect(ms_fake, org.tenant)
    alice = ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")
    good, bad = Receiver(echo=True), Receiver(echo=False)
    graph = Graph(connection)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    request = {
        "changeType": "created,updated,deleted",
        "resource": f"users/{alice.id}/messages",
        "expirationDateTime": expires,
        "clientState": "s3cret",
    }
    try:
        with pytest.raises(GraphError) as refused:
            graph.post("/subscriptions", {**request, "notificationUrl": bad.url})
        assert refused.value.code == "ValidationError"

        created = graph.post(
            "/subscriptions", {**request, "notificationUrl": good.url, "lifecycleNotificationUrl": good.url}
        )
        message_id = ms_fake.add_message(alice, "Inbox", mime("hello"))
        ms_fake.send_lifecycle(created["id"], "reauthorizationRequired")
        renewed = graph.patch(f"/subscriptions/{created['id']}", {"expirationDateTime": expires})
        graph.delete(f"/subscriptions/{created['id']}")
    finally:
        good.shutdown()
        bad.shutdown()

    assert created["clientState"] == "s3cret" and renewed["id"] == created["id"]
    assert ms_fake.notification_responses == [202, 202]
    change = __import__("json").loads(good.bodies[0])["value"][0]
    assert change["changeType"] == "created" and change["resourceData"]["id"] == message_id
    assert change["clientState"] == "s3cret" and change["tenantId"] == str(connection.directory_id)
    lifecycle = __import__("json").loads(good.bodies[1])["value"][0]
    assert lifecycle["lifecycleEvent"] == "reauthorizationRequired"
    assert ms_fake.subscriptions == {}


def test_all_roles_cover_every_permission_the_page_asks_for():
    assert {"User.Read.All", "Mail.Read", "Calendars.Read", "Contacts.Read", "IMAP.AccessAsApp"} <= ALL_ROLES
