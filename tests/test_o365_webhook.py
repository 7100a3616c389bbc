"""`/o365`, the Graph change-notification webhook, on its own: the reachability
answer, the validation echo, a batch refused unless every item belongs to an
active subscription of ours (nothing stored then), and a good batch stored
durably before the 202 and published to a worker by task name."""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from m365 import notifications
from m365.notifications import client_state_digest
from m365.sync import Notification, Subscription

DIRECTORY = "0b5b8b2a-4d55-4b0e-9a45-3c1c5b8f2d11"
OTHER_DIRECTORY = "7f3c2d10-9b1e-4a7c-8d2e-1e5b6c7d8e9f"


def subscribe(tenant, user_id: str = "u-anna", mailbox: str = "anna@contoso.com") -> tuple[Subscription, str]:
    """A subscription row as `m365.subscriptions.create` leaves it, and its clientState."""
    client_state = secrets.token_urlsafe(48)
    subscription = Subscription.objects.create(
        tenant=tenant,
        directory_id=DIRECTORY,
        user_id=user_id,
        mailbox=mailbox,
        resource=f"users/{user_id}/messages",
        graph_id=secrets.token_hex(16),
        client_state_sha256=client_state_digest(client_state),
        expires_at=timezone.now() + timedelta(days=2),
    )
    return subscription, client_state


def change(subscription: Subscription, client_state: str, change_type: str = "created", message_id: str = "m1") -> dict:
    """One change notification, in the shape Graph posts."""
    return {
        "subscriptionId": subscription.graph_id,
        "subscriptionExpirationDateTime": "2026-12-09T05:00:00.0000000Z",
        "changeType": change_type,
        "resource": f"Users/{subscription.user_id}/Messages/{message_id}",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": f"Users/{subscription.user_id}/Messages/{message_id}",
            "@odata.etag": 'W/"CQAAABYAAAB"',
            "id": message_id,
        },
        "clientState": client_state,
        "tenantId": DIRECTORY,
    }


def post(client, body) -> object:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post("/o365", data=data, content_type="application/json")


def test_get_answers_405_with_the_guides_body(client):
    response = client.get("/o365")
    assert response.status_code == 405
    assert response.content == b"Failure: 405 Method Not Allowed"
    assert response["Allow"] == "POST"


def test_the_validation_token_is_echoed_as_plain_text(client):
    token = "Validation: Testing client application reachability for subscription Request-Id: 3f5e…"
    response = client.post(f"/o365?validationToken={requests.utils.quote(token)}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == token


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a notification batch"),
        (b'{"value": []}', "empty"),
        (b'{"value": ["x"]}', "notification 0 is not an object"),
        (b'{"value": [{"subscriptionId": "s", "clientState": "c"}]}', "no tenantId"),
    ],
)
def test_a_body_that_is_no_batch_is_refused_with_the_reason(client, db, body, says):
    response = post(client, body)
    assert response.status_code == 400
    assert says in response.content.decode()
    assert not Notification.objects.exists()


def test_an_unknown_change_type_is_refused(client, org):
    subscription, client_state = subscribe(org.tenant)
    response = post(client, {"value": [change(subscription, client_state, change_type="exploded")]})
    assert response.status_code == 400
    assert "changeType" in response.content.decode()


def test_a_wrong_client_state_is_refused_and_nothing_stored(client, org, caplog):
    caplog.set_level("DEBUG")
    subscription, client_state = subscribe(org.tenant)
    good = change(subscription, client_state, message_id="m1")
    forged = change(subscription, client_state[:-1] + ("A" if client_state[-1] != "A" else "B"), message_id="m2")
    response = post(client, {"value": [good, forged]})
    assert response.status_code == 403
    assert client_state not in response.content.decode()
    assert not Notification.objects.exists()
    # Neither the secret nor the guess is logged; the refusal and its reason are.
    assert "clientState does not match" in caplog.text
    assert client_state[:-1] not in caplog.text


def test_an_unknown_subscription_is_refused(client, org):
    subscription, client_state = subscribe(org.tenant)
    item = change(subscription, client_state)
    item["subscriptionId"] = "a1b2c3d4-0000-0000-0000-000000000000"
    assert post(client, {"value": [item]}).status_code == 403
    assert not Notification.objects.exists()


def test_a_removed_subscription_is_refused(client, org):
    subscription, client_state = subscribe(org.tenant)
    Subscription.objects.filter(pk=subscription.pk).update(state=Subscription.State.REMOVED)
    assert post(client, {"value": [change(subscription, client_state)]}).status_code == 403
    assert not Notification.objects.exists()


def test_another_directory_is_refused(client, org):
    subscription, client_state = subscribe(org.tenant)
    item = change(subscription, client_state)
    item["tenantId"] = OTHER_DIRECTORY
    assert post(client, {"value": [item]}).status_code == 403
    assert not Notification.objects.exists()


def test_the_outsiders_subscription_cannot_carry_items_into_another_tenant(client, org, outsider):
    """Every item is stored under its own subscription's tenant, whatever else the batch holds."""
    from tenants.models import Membership

    fabrikam = Membership.objects.get(user=outsider).tenant
    ours, ours_state = subscribe(org.tenant)
    theirs, theirs_state = subscribe(fabrikam, user_id="u-charlie", mailbox="charlie@fabrikam.com")
    response = post(
        client, {"value": [change(ours, ours_state, message_id="a"), change(theirs, theirs_state, message_id="b")]}
    )
    assert response.status_code == 202
    stored = {n.payload["resourceData"]["id"]: n.tenant_id for n in Notification.objects.all()}
    assert stored == {"a": org.tenant.pk, "b": fabrikam.pk}


def test_a_good_batch_is_stored_without_its_client_state_before_the_202(client, org):
    subscription, client_state = subscribe(org.tenant)
    lifecycle = {
        "subscriptionId": subscription.graph_id,
        "subscriptionExpirationDateTime": "2026-12-09T05:00:00.0000000Z",
        "lifecycleEvent": "reauthorizationRequired",
        "clientState": client_state,
        "tenantId": DIRECTORY.upper(),  # directory ids compare case-insensitively
    }
    response = post(client, {"value": [change(subscription, client_state), lifecycle]})
    assert response.status_code == 202
    rows = list(Notification.objects.order_by("pk"))
    assert [(n.kind, n.event) for n in rows] == [("change", "created"), ("lifecycle", "reauthorizationRequired")]
    assert all(n.subscription_id == subscription.pk and n.processed_at is None for n in rows)
    assert client_state not in json.dumps([n.payload for n in rows])


@pytest.mark.django_db(transaction=True)
def test_stored_notifications_are_published_to_the_worker_queue_after_commit(live_server, org, redis_broker):
    """Over a real socket: answered 202 well within Graph's 3 s; the publishing
    thread marks the rows enqueued once the task is in the broker."""
    subscription, client_state = subscribe(org.tenant)
    started = time.monotonic()
    response = requests.post(
        f"{live_server.url}/o365", json={"value": [change(subscription, client_state)]}, timeout=10
    )
    assert response.status_code == 202
    assert time.monotonic() - started < 3
    assert Notification.objects.count() == 1
    deadline = time.monotonic() + 10
    while Notification.objects.filter(enqueued_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Notification.objects.filter(enqueued_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_batches_is_answered_within_graphs_three_seconds(live_server, org, redis_broker):
    """Graph posts many batches at once when a mailbox is busy: each answered 202 in time, every item stored once."""
    subscription, client_state = subscribe(org.tenant)

    def post_batch(n: int) -> tuple[int, float]:
        batch = {"value": [change(subscription, client_state, message_id=f"m{n}-{i}") for i in range(20)]}
        started = time.monotonic()
        response = requests.post(f"{live_server.url}/o365", json=batch, timeout=10)
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post_batch, range(40)))
    assert {status for status, _ in answers} == {202}
    assert max(seconds for _, seconds in answers) < 3
    assert Notification.objects.count() == 800
    assert Notification.objects.values("payload__resourceData__id").distinct().count() == 800


def test_the_sweep_publishes_notifications_nobody_was_given(org, redis_broker):
    subscription, _ = subscribe(org.tenant)
    old = timezone.now() - timedelta(minutes=5)
    lost = Notification.objects.create(
        tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={}, received_at=old
    )
    fresh = Notification.objects.create(
        tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={}
    )
    done = Notification.objects.create(
        tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={},
        received_at=old, processed_at=old,
    )  # fmt: skip
    assert list(notifications.stranded().values_list("pk", flat=True)) == [lost.pk]
    assert notifications.sweep() == 1
    lost.refresh_from_db()
    fresh.refresh_from_db()
    done.refresh_from_db()
    assert lost.enqueued_at is not None
    assert fresh.enqueued_at is None and done.enqueued_at is None
    assert notifications.sweep() == 0  # given to a worker now: left alone for ARCHIVA_REQUEUE_AFTER


def test_processed_notifications_are_pruned_after_thirty_days(org):
    subscription, _ = subscribe(org.tenant)
    now = timezone.now()

    def stored(days_ago: float, processed: bool = True) -> Notification:
        when = now - timedelta(days=days_ago)
        return Notification.objects.create(
            tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={},
            received_at=when, processed_at=when if processed else None,
        )  # fmt: skip

    old, recent, unprocessed = stored(31), stored(29), stored(40, processed=False)
    assert notifications.prune(now) == 1
    assert set(Notification.objects.values_list("pk", flat=True)) == {recent.pk, unprocessed.pk}
    assert not Notification.objects.filter(pk=old.pk).exists()


def test_a_worker_back_on_its_broker_takes_again_the_notifications_published_before_the_restart(org, settings):
    """Tasks published before a broker restart may be gone with it (a Redis
    without persistence): the reconnect sweep takes their notifications again
    at once, not ARCHIVA_REQUEUE_AFTER later; those published since, those
    processed, and those whose retry is still to come are left alone."""
    settings.ARCHIVA_REQUEUE_AFTER = 3600
    subscription, _ = subscribe(org.tenant)

    def stored(enqueued_at, processed_at=None) -> Notification:
        return Notification.objects.create(
            tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={},
            enqueued_at=enqueued_at, processed_at=processed_at,
        )  # fmt: skip

    now = timezone.now()
    before = stored(now)  # published, its task in the broker when it restarted
    stored(now, processed_at=now)
    stored(now + timedelta(minutes=5))  # a retry published with its countdown (notifications.retry_due)
    reconnected = timezone.now() + timedelta(microseconds=1)
    assert not notifications.stranded(grace=0).exists()  # published, inside the requeue window
    assert list(notifications.stranded(grace=0, published_before=reconnected)) == [before]
    stored(reconnected + timedelta(seconds=1))  # published since the connection came back
    assert list(notifications.stranded(grace=0, published_before=reconnected)) == [before]


def test_the_reconnect_sweep_publishes_them_again_and_refuses_a_bad_instant(org, settings, redis_broker):
    from m365.tasks import sweep_notifications

    settings.ARCHIVA_REQUEUE_AFTER = 3600
    subscription, _ = subscribe(org.tenant)
    earlier = timezone.now() - timedelta(seconds=5)
    lost = Notification.objects.create(
        tenant=org.tenant, subscription=subscription, kind="change", event="created", payload={},
        received_at=earlier, enqueued_at=earlier,
    )  # fmt: skip
    assert sweep_notifications(at_start=True) == 0  # a worker's start: inside the requeue window
    assert sweep_notifications(at_start=True, published_before=timezone.now().isoformat()) == 1
    lost.refresh_from_db()
    assert lost.enqueued_at > earlier  # published again (to the real broker), marked anew
    with pytest.raises(ValueError, match="ISO 8601"):
        sweep_notifications(at_start=True, published_before="yesterday")
    with pytest.raises(ValueError, match="UTC offset"):
        sweep_notifications(at_start=True, published_before="2026-01-01T00:00:00")
