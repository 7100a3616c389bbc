"""A real Stripe-compatible server for tests: localstripe on loopback.

localstripe's own command binds every interface, so the suite runs its
aiohttp `app` in a thread on 127.0.0.1, like the S3 server.  Its state is
one module-level store, emptied before each test (`DELETE /_config/data`);
it would also pickle that store to /tmp after every write, which parallel
runs must not share, so that is turned off here.  Webhooks: the events
localstripe records (`GET /v1/events`) are delivered to Archiva's endpoint
with the signature Stripe would put on them (`deliver_events`), or, for a
live server, by localstripe itself (`/_config/webhooks/…`); the few events localstripe
never sends are built from its real objects and signed here (`event_about`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from importlib import import_module

import pytest
import requests

from tests.servers import free_port, missing, wait_for_port

SECRET_KEY = "sk_test_archiva_suite"
PUBLISHABLE_KEY = "pk_test_archiva_suite"
WEBHOOK_SECRET = "whsec_archiva_suite"
GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # attaches, then every charge is declined


@dataclass
class LocalStripe:
    url: str
    delivered: set[str] = field(default_factory=set)

    def call(self, method: str, path: str, **data) -> dict:
        response = requests.request(method, f"{self.url}{path}", data=data or None, auth=(SECRET_KEY, ""), timeout=10)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    def flush(self) -> None:
        from localstripe.webhooks import _webhooks

        requests.delete(f"{self.url}/_config/data", timeout=10).raise_for_status()
        _webhooks.clear()  # the endpoints a test registered (the store's flush keeps them)
        self.delivered.clear()

    def send_webhooks_to(self, url: str) -> None:
        """Have localstripe post its events to `url` itself, signed with the suite's webhook secret."""
        response = requests.post(
            f"{self.url}/_config/webhooks/archiva", data={"url": url, "secret": WEBHOOK_SECRET}, timeout=10
        )
        response.raise_for_status()

    def payment_method(self, number: str = GOOD_CARD) -> str:
        """A card payment method, as Stripe Elements would make it in the browser."""
        found = self.call(
            "POST",
            "/v1/payment_methods",
            **{
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        return str(found["id"])

    def events(self) -> list[dict]:
        """Every event localstripe recorded, oldest first."""
        listed = self.call("GET", "/v1/events?limit=100")["data"]
        return sorted(listed, key=lambda event: (event["created"], event["id"]))


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe puts on a webhook."""
    moment = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), b"%d.%s" % (moment, payload), hashlib.sha256).hexdigest()
    return f"t={moment},v1={signature}"


def post_event(client, event: dict, secret: str = WEBHOOK_SECRET):
    payload = json.dumps(event).encode()
    return client.post(
        "/stripe/webhook", data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(payload, secret)
    )


def deliver_events(client, stripe_server: LocalStripe, types: set[str] | None = None) -> list[str]:
    """Send the events not delivered yet to /stripe/webhook, as Stripe would; their types."""
    sent = []
    for event in stripe_server.events():
        if event["id"] in stripe_server.delivered or (types and event["type"] not in types):
            continue
        response = post_event(client, event)
        assert response.status_code == 200, (event["type"], response.status_code, response.content)
        stripe_server.delivered.add(event["id"])
        sent.append(event["type"])
    return sent


def event_about(obj: dict, type_: str) -> dict:
    """An event as Stripe sends it, about an object localstripe really holds.

    For what localstripe never reports: a card payment that fails when an
    invoice is paid (its `/v1/invoices/{id}/pay` drops the failure), which
    Stripe reports as `invoice.payment_failed`.
    """
    return {
        "id": f"evt_suite_{secrets.token_hex(8)}",
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def _serve(port: int, ready: threading.Event, stopping: list) -> None:
    import warnings

    from aiohttp import web
    from localstripe.resources import store
    from localstripe.server import app

    store.dump_to_disk = lambda *args, **kwargs: None  # no shared /tmp/localstripe.pickle
    # localstripe registers plain functions as handlers, which aiohttp deprecates: its business, not ours.
    warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    stopping.append((loop, runner))
    ready.set()
    loop.run_forever()
    for task in asyncio.all_tasks(loop):  # webhooks localstripe was about to send to nobody
        task.cancel()
    loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.fixture(scope="session")
def localstripe_server():
    """localstripe's app on a loopback port for the whole run."""
    try:
        import localstripe.server  # noqa: F401
    except ImportError:
        missing("localstripe", "pip install -r requirements-dev.txt")
    port = free_port()
    ready, stopping = threading.Event(), []
    thread = threading.Thread(target=_serve, args=(port, ready, stopping), name="localstripe", daemon=True)
    thread.start()
    assert ready.wait(20), "localstripe did not start"
    wait_for_port(port)
    yield LocalStripe(url=f"http://127.0.0.1:{port}")
    loop, _runner = stopping[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def seed_plans() -> None:
    """The plans the data migration seeds, as it seeds them.  A transactional test
    (the SMTP ingest's, the browser's) empties every table after it, migrations'
    data included; the tests after it get the plans back this way."""
    from django.apps import apps

    import_module("billing.migrations.0002_seed_plans").seed(apps, None)


@pytest.fixture
def stripe_server(localstripe_server, settings, django_db_blocker):
    """Billing on, against an empty localstripe, with the seeded plans."""
    localstripe_server.flush()
    with django_db_blocker.unblock():
        seed_plans()
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = PUBLISHABLE_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.ARCHIVA_STRIPE_API_BASE = localstripe_server.url
    yield localstripe_server
