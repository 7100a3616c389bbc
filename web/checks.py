"""Readiness checks: can this process reach what it depends on?

Each check returns None when fine and raises when not.  They run in
threads with one shared deadline, so a dependency that hangs (a firewalled
database, an S3 endpoint retrying) makes /readyz answer 503 within
`TIMEOUT` seconds instead of tying up a web worker.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import connection
from kombu import Connection

from infra.storage import get_store

logger = logging.getLogger(__name__)

TIMEOUT = 3.0  # overall deadline for all checks, in seconds
SEARCH_TIMEOUT = 2.0
OK = "ok"
NOT_CONFIGURED = "not configured"


class NotConfigured(Exception):
    """An optional dependency this deployment does not use."""


def check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # This runs in its own thread, which owns its own connection.
        connection.close()


def check_storage() -> None:
    get_store().ping()


def check_broker() -> None:
    # The broker named by Django settings, read on every check (the app's own
    # configuration is loaded once and cached), through kombu with the options
    # the Celery app takes from them: the app (archiva.celery) is above web.
    with Connection(  # type: ignore[no-untyped-call]  # kombu's Connection has no annotations
        settings.CELERY_BROKER_URL,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT,
    ) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=TIMEOUT)


def check_search() -> None:
    if not settings.ARCHIVA_SEARCH_URL:
        # The embedded index: its folder must be there and writable.
        from search.backends import get_backend

        if not get_backend().ping():
            raise RuntimeError("the embedded search index is not usable")
        return
    request = _search_request(settings.ARCHIVA_SEARCH_URL)
    with urllib.request.urlopen(request, timeout=SEARCH_TIMEOUT) as response:  # noqa: S310 (scheme checked)
        response.read(1024)


def _search_request(url: str) -> urllib.request.Request:
    """A GET for the search URL, with any user:password moved into a header."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("ARCHIVA_SEARCH_URL must be an http(s) URL")
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    # Only http(s) gets here (checked above), never file: or custom schemes.
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)), method="GET")  # noqa: S310
    if parts.username:
        credentials = f"{parts.username}:{parts.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    return request


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "storage": check_storage,
    "broker": check_broker,
    "search": check_search,
}


def _run_one(name: str, check: Callable[[], None], results: dict[str, str]) -> None:
    try:
        check()
    except NotConfigured:
        results[name] = NOT_CONFIGURED
    except Exception as exc:
        # The reason goes to the log only: /readyz is public and error texts
        # can name hosts, buckets or credentials.
        logger.warning("readiness check %s failed: %s", name, exc)
        results[name] = "unavailable"
    else:
        results[name] = OK


def run_checks(checks: dict[str, Callable[[], None]] | None = None, timeout: float = TIMEOUT) -> dict[str, str]:
    """Run every check at once; a check still running at the deadline counts as failed."""
    checks = CHECKS if checks is None else checks
    results: dict[str, str] = {}
    threads = [
        threading.Thread(target=_run_one, args=(name, check, results), name=f"readyz-{name}", daemon=True)
        for name, check in checks.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    answered = dict(results)  # checks that finish after the deadline change nothing
    for name in checks.keys() - answered.keys():
        logger.warning("readiness check %s gave no answer within %.1fs", name, timeout)
    return {name: answered.get(name, "timed out") for name in checks}


def failed(results: dict[str, str]) -> list[str]:
    return [name for name, result in results.items() if result not in (OK, NOT_CONFIGURED)]
