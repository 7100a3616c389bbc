"""WORM on S3 (moto's server): tenant buckets made with Object Lock per
ARCHIVA_S3_OBJECT_LOCK, objects locked for the shortest retention in force,
legal holds following the tenant's holds, and retention's deletion removing
every version, never a locked one.

moto enforces: Object Lock on bucket creation, default retention applied to
new objects, legal holds, and refusing to delete a locked version.  It does
not refuse shortening a COMPLIANCE retention (real S3 does); README lists it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archive.models import Message
from compliance import holds, purge, worm
from compliance.models import HeldObject, PendingPurge
from infra.storage import LOCK_FOREVER_DAYS, ObjectLocked, get_store
from tests.conftest import membership_of
from tests.test_retention import DAY, archive_one, objects_of, set_policy


@pytest.fixture
def s3_lock(request, settings, s3_endpoint):
    """The S3 store with Object Lock in the mode the test names (a parameter), "off" by default."""
    settings.ARCHIVA_STORAGE = "s3"
    settings.ARCHIVA_S3_ENDPOINT = s3_endpoint
    settings.ARCHIVA_S3_OBJECT_LOCK = getattr(request, "param", "OFF")
    settings.ARCHIVA_RETENTION_DELAY = 0
    get_store.cache_clear()
    yield get_store()
    get_store.cache_clear()


def lock_rule(config: dict) -> tuple[str, int]:
    rule = config["Rule"]["DefaultRetention"]
    return rule["Mode"], rule["Days"]


def head(store, bucket: str, key: str) -> dict:
    # moto's get_object_retention is broken (../shared/TESTING.md): head_object shows the lock.
    return store.client.head_object(Bucket=bucket, Key=key)


@pytest.mark.django_db
@pytest.mark.parametrize("s3_lock", ["COMPLIANCE"], indirect=True)
def test_a_tenant_bucket_is_made_with_object_lock_and_objects_locked_for_the_retention(
    s3_lock, org, outsider, django_capture_on_commit_callbacks
):
    bucket = org.tenant.bucket
    config = s3_lock.client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config["ObjectLockEnabled"] == "Enabled"
    assert lock_rule(config) == ("COMPLIANCE", LOCK_FOREVER_DAYS)
    assert s3_lock.client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    # A policy in force locks new objects for its shortest period.  (Before
    # any object: moto refuses to change the lock configuration of a bucket
    # that holds objects, which S3 allows; README lists it.)
    with django_capture_on_commit_callbacks(execute=True):
        set_policy(org, "7y", [{"query": "folder:Junk", "period": "30d"}])
    config = s3_lock.client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock_rule(config) == ("COMPLIANCE", 30)
    message = archive_one(org.tenant, "locked a month", 1 * DAY)
    for key in objects_of(message):
        stored = head(s3_lock, bucket, key)
        assert stored["ObjectLockMode"] == "COMPLIANCE"
        assert abs(stored["ObjectLockRetainUntilDate"] - (datetime.now(UTC) + timedelta(days=30))) < timedelta(hours=1)

    # Kept forever (no policy yet): locked for a century.
    theirs = archive_one(membership_of(outsider).tenant, "locked for good", 10 * DAY)
    stored = head(s3_lock, theirs.tenant.bucket, theirs.original_key)
    assert stored["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=LOCK_FOREVER_DAYS - 2)


@pytest.mark.django_db
def test_without_object_lock_the_bucket_is_only_versioned(s3_lock, org):
    bucket = org.tenant.bucket
    assert s3_lock.client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    with pytest.raises(s3_lock.client.exceptions.ClientError):
        s3_lock.client.get_object_lock_configuration(Bucket=bucket)


@pytest.mark.django_db
@pytest.mark.parametrize("s3_lock", ["GOVERNANCE"], indirect=True)
def test_a_hold_sets_legal_holds_on_its_messages_objects_and_a_release_lifts_them(s3_lock, org):
    bucket = org.tenant.bucket
    held = archive_one(org.tenant, "merger draft", 10 * DAY)
    other = archive_one(org.tenant, "lunch", 10 * DAY)
    alice = membership_of(org.owner)
    hold = holds.create_hold(alice, name="Merger", reason="regulator", query="merger")
    assert worm.sync_legal_holds(org.tenant).placed == len(set(objects_of(held)))
    for key in objects_of(held):
        assert head(s3_lock, bucket, key)["ObjectLockLegalHoldStatus"] == "ON", key
    assert head(s3_lock, bucket, other.original_key).get("ObjectLockLegalHoldStatus", "OFF") == "OFF"
    with pytest.raises(ObjectLocked):  # the bucket itself refuses, whoever asks
        s3_lock.purge(bucket, held.original_key)
    assert worm.sync_legal_holds(org.tenant).placed == 0  # only the changes are sent

    holds.release_hold(alice, hold)
    assert worm.sync_legal_holds(org.tenant).lifted == len(set(objects_of(held)))
    assert head(s3_lock, bucket, held.original_key)["ObjectLockLegalHoldStatus"] == "OFF"
    assert not HeldObject.objects.filter(tenant=org.tenant).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("s3_lock", ["GOVERNANCE"], indirect=True)
def test_retention_never_bypasses_a_lock_and_retries_the_objects_later(s3_lock, org):
    """Objects locked longer than their message's period (it was dated long
    before it was archived) stay until the lock passes; the rows go now and
    the objects are retried by each run."""
    old = archive_one(org.tenant, "imported old mail", 400 * DAY)
    keys = set(objects_of(old))
    set_policy(org, "1y")
    outcome = purge.run(org.tenant)
    assert outcome.deleted == 1 and outcome.objects_locked == len(keys)
    assert not Message.objects.filter(pk=old.pk).exists()
    left = PendingPurge.objects.filter(tenant=org.tenant, kind=PendingPurge.Kind.OBJECT)
    assert set(left.values_list("ref", flat=True)) == keys
    assert all("locked" in entry.error for entry in left)
    assert all(s3_lock.exists(org.tenant.bucket, key) for key in keys)


@pytest.mark.django_db
def test_retention_deletes_every_version_of_an_object(s3_lock, org):
    bucket = org.tenant.bucket
    old = archive_one(org.tenant, "old", 400 * DAY)
    keys = set(objects_of(old))
    set_policy(org, "1y")
    outcome = purge.run(org.tenant)
    assert outcome.objects_deleted == len(keys)
    for key in keys:
        listing = s3_lock.client.list_object_versions(Bucket=bucket, Prefix=key)
        assert not listing.get("Versions") and not listing.get("DeleteMarkers"), key
