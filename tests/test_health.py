"""Probes: /healthz (alive), /readyz (dependencies answer) and the /o365 webhook."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from django.test import Client
from django.urls import reverse

from infra.storage import FolderStore, StorageError
from tests.servers import free_port
from web import checks


@pytest.fixture
def http_server():
    """A real HTTP server on loopback that answers every GET with 200."""

    class Handler(http.server.BaseHTTPRequestHandler):
        seen_auth: list[str | None] = []

        def do_GET(self):  # noqa: N802 (http.server's naming)
            Handler.seen_auth.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"tagline": "You Know, for Search"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, Handler.seen_auth
    server.shutdown()
    server.server_close()


def readyz(client):
    response = client.get(reverse("readyz"))
    return response.status_code, response.json()


# --- /healthz -------------------------------------------------------------


def test_healthz_answers_ok_without_touching_the_database(client):
    """No `db` fixture: pytest-django would fail this test on any query."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"process": "ok"}}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_and_readyz_answer_on_a_pod_ip_that_no_allowed_host_names(client, settings):
    """The kubelet probes http://<pod IP>:8000/healthz: neither 400 (ALLOWED_HOSTS) nor a redirect to https."""
    settings.ALLOWED_HOSTS = ["archiva.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/status/", HTTP_HOST="10.42.7.19:8000").status_code == 400  # any other page
    response = client.get("/healthz", HTTP_HOST="10.42.7.19:8000")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert client.head("/healthz", HTTP_HOST="[fd00::7]:8000").status_code == 200


@pytest.mark.django_db
def test_readyz_answers_on_any_host_too(client, settings, redis_broker):
    settings.ALLOWED_HOSTS = ["archiva.com"]
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/readyz", HTTP_HOST="10.42.7.19:8000")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_probes_refuse_other_methods_with_405(client):
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


# --- /readyz --------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_is_ok_when_database_storage_and_broker_answer(client, redis_broker):
    status, body = readyz(client)
    assert status == 200
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert body["checks"] == {"database": "ok", "storage": "ok", "broker": "ok", "search": "ok"}


@pytest.mark.django_db
def test_readyz_names_the_broker_when_it_is_down(client, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    status, body = readyz(client)
    assert time.monotonic() - started < checks.TIMEOUT + 1
    assert status == 200  # degraded, not dead: the pod stays in its Service
    assert body["status"] == "degraded"
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_names_storage_when_the_store_does_not_answer(client, monkeypatch, redis_broker):
    def refuse(self):
        raise StorageError("storage folder /srv/archiva is not writable")

    monkeypatch.setattr(FolderStore, "ping", refuse)
    status, body = readyz(client)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["failed"] == ["storage"]
    assert "/srv/archiva" not in json.dumps(body)  # reasons go to the log, not to the public


@pytest.mark.django_db
def test_readyz_checks_search_when_it_is_configured(client, settings, http_server, redis_broker):
    server, seen_auth = http_server
    settings.ARCHIVA_SEARCH_URL = f"http://elastic:s3cret@127.0.0.1:{server.server_port}/"
    status, body = readyz(client)
    assert status == 200
    assert body["checks"]["search"] == "ok"
    assert seen_auth == ["Basic ZWxhc3RpYzpzM2NyZXQ="]  # elastic:s3cret, moved out of the URL


@pytest.mark.django_db
def test_readyz_names_search_when_it_is_configured_but_down(client, settings, redis_broker):
    settings.ARCHIVA_SEARCH_URL = f"http://elastic:s3cret@127.0.0.1:{free_port()}/"
    status, body = readyz(client)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["failed"] == ["search"]
    assert "s3cret" not in json.dumps(body)


def test_a_check_that_hangs_counts_as_failed_at_the_deadline():
    """A dependency that never answers must not hold the probe (or a web worker) hostage."""

    def hang():
        time.sleep(5)

    started = time.monotonic()
    results = checks.run_checks({"fast": lambda: None, "slow": hang}, timeout=0.2)
    assert time.monotonic() - started < 1
    assert results == {"fast": "ok", "slow": "timed out"}
    assert checks.failed(results) == ["slow"]


def test_a_check_that_raises_counts_as_failed():
    def broken():
        raise ConnectionRefusedError("no")

    results = checks.run_checks({"database": broken}, timeout=1)
    assert results == {"database": "unavailable"}
    assert checks.failed(results) == ["database"]


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_does_not_answer(client, redis_broker):
    """The one dependency without which no page works: the pod leaves its Service."""
    from django.db import connections

    default = connections.settings["default"]
    port = default["PORT"]
    default["PORT"] = str(free_port())  # the checks' thread opens its own connection, to nothing
    try:
        status, body = readyz(client)
    finally:
        default["PORT"] = port
    assert status == 503
    assert body["status"] == "fail"
    assert body["failed"] == ["database"]
    assert body["checks"]["broker"] == "ok"


def test_readyz_with_the_database_and_search_down_is_503_and_names_both(client, monkeypatch):
    def down():
        raise ConnectionRefusedError("no")

    monkeypatch.setattr(checks, "CHECKS", {"database": down, "search": down, "broker": lambda: None})
    status, body = readyz(client)
    assert status == 503
    assert body == {
        "status": "fail",
        "failed": ["database", "search"],
        "checks": {"database": "unavailable", "search": "unavailable", "broker": "ok"},
    }


# --- /o365 ----------------------------------------------------------------


def test_o365_answers_get_with_405(client):
    response = client.get("/o365")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_o365_echoes_the_validation_token_as_plain_text():
    """Graph validates a subscription with a POST; no CSRF token can be expected from it."""
    client = Client(enforce_csrf_checks=True)
    token = "Validation: Testing client application reachability for subscription Request-Id: 3b3f9821-ce3f"
    response = client.post("/o365?validationToken=" + token.replace(" ", "%20"), content_type="text/plain")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == token


def test_o365_rejects_a_body_that_is_not_json_with_400():
    response = Client(enforce_csrf_checks=True).post("/o365", "<xml/>", content_type="application/xml")
    assert response.status_code == 400
    assert b"not JSON" in response.content


@pytest.mark.django_db
def test_readyz_names_the_embedded_index_when_its_folder_is_unusable(client, settings, redis_broker, tmp_path):
    from search.backends import reset_backend

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    settings.ARCHIVA_SEARCH_INDEX_DIR = blocker / "index"  # under a file: unusable
    reset_backend()
    try:
        status, body = readyz(client)
    finally:
        reset_backend()
    assert status == 200
    assert body["status"] == "degraded"
    assert body["failed"] == ["search"]
