"""Object storage: the same contract on the folder store and on a real
S3-compatible server (moto on loopback).

Objects are immutable and content-addressed; `put_file` returns only once the
object is durable; every read checks the SHA-256; every failure of ours is a
StorageError, never a raw OS or botocore exception (the SMTP side turns it
into `451 4.3.0`).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest

from infra import storage
from infra.storage import FolderStore, IntegrityError, S3Store, StorageError, get_store, raw_key
from tests.servers import free_port

MiB = 1024 * 1024


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, settings, tmp_path):
    """The deployment's store as `get_store()` builds it, once per backend."""
    if request.param == "s3":
        return request.getfixturevalue("use_s3")
    settings.ARCHIVA_STORAGE = "folder"
    settings.DATA_DIR = tmp_path
    get_store.cache_clear()
    return get_store()


@pytest.fixture
def bucket(store) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    store.create_bucket(name)
    return name


def make_file(directory: Path, data: bytes) -> tuple[Path, str]:
    path = directory / f"upload-{uuid.uuid4().hex[:8]}.eml"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def put(store, bucket: str, directory: Path, data: bytes) -> tuple[str, str]:
    path, sha = make_file(directory, data)
    key = raw_key(sha)
    store.put_file(bucket, key, path, sha)
    return key, sha


def tamper(store, bucket: str, key: str, data: bytes) -> None:
    """Change a stored object behind the store's back (disk rot, an operator)."""
    if isinstance(store, S3Store):
        store.client.put_object(Bucket=bucket, Key=key, Body=data)
    else:
        path = store.root / bucket / key
        path.chmod(0o640)
        path.write_bytes(data)


def temporaries(store: FolderStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.name.startswith(".tmp-")]


# --- the shared contract --------------------------------------------------


def test_the_store_is_chosen_by_settings(store):
    assert isinstance(store, S3Store | FolderStore)
    store.ping()


def test_creating_a_bucket_twice_is_harmless(store, bucket):
    store.create_bucket(bucket)
    assert store.bucket_size(bucket) == 0


def test_a_stored_object_reads_back_verified_under_its_content_address(store, bucket, tmp_path):
    data = b"From: alice@contoso.com\r\nSubject: hi\r\n\r\nhello\r\n"
    key, sha = put(store, bucket, tmp_path, data)

    assert key == f"raw/{sha[:2]}/{sha}"
    assert store.exists(bucket, key)
    assert store.read_verified(bucket, key, sha) == data
    assert store.verify(bucket, key, sha) == len(data)
    assert store.bucket_size(bucket) == len(data)


def test_a_range_reads_back_verified_and_a_bad_range_is_refused(store, bucket):
    """A packed message is a range of its pack: read by offset and length, checked against its own hash."""
    first, second = b"first message\r\n" * 10, b"second message\r\n" * 20
    data = first + second
    store.put_many([(bucket, "pack/ab/range-test", data, hashlib.sha256(data).hexdigest())])
    sha = hashlib.sha256(second).hexdigest()

    assert store.read_verified(bucket, "pack/ab/range-test", sha, len(first), len(second)) == second
    with pytest.raises(IntegrityError):  # the wrong range
        store.read_verified(bucket, "pack/ab/range-test", sha, 0, len(second))
    with pytest.raises(IntegrityError):  # past the end: short
        store.read_verified(bucket, "pack/ab/range-test", sha, len(first) + 1, len(second))
    with pytest.raises(StorageError):
        store.read_verified(bucket, "pack/ab/missing", sha, 0, len(second))


def test_a_tampered_object_is_refused_on_read(store, bucket, tmp_path):
    key, sha = put(store, bucket, tmp_path, b"the original bytes\r\n")
    tamper(store, bucket, key, b"the forged bytes\r\n")

    with pytest.raises(IntegrityError, match=sha):
        store.read_verified(bucket, key, sha)
    with pytest.raises(IntegrityError):
        store.verify(bucket, key, sha)


def test_a_read_with_the_wrong_hash_is_refused(store, bucket, tmp_path):
    key, _sha = put(store, bucket, tmp_path, b"some bytes\r\n")
    with pytest.raises(IntegrityError):
        store.read_verified(bucket, key, hashlib.sha256(b"other bytes").hexdigest())


def test_exists_is_false_for_an_object_never_stored(store, bucket):
    assert not store.exists(bucket, raw_key("0" * 64))


def test_a_missing_object_is_a_storage_error_not_an_integrity_error(store, bucket):
    sha = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(StorageError) as caught:
        store.read_verified(bucket, raw_key(sha), sha)
    assert not isinstance(caught.value, IntegrityError)


def test_storing_the_same_key_twice_is_idempotent(store, bucket, tmp_path):
    data = b"delivered twice by a retrying Exchange\r\n"
    key, sha = put(store, bucket, tmp_path, data)
    again, _ = put(store, bucket, tmp_path, data)

    assert again == key
    assert store.read_verified(bucket, key, sha) == data
    assert store.bucket_size(bucket) == len(data)


def test_bucket_size_adds_up_every_object(store, bucket, tmp_path):
    sizes = [10, 1000, 100_000]
    for size in sizes:
        put(store, bucket, tmp_path, os.urandom(size))
    assert store.bucket_size(bucket) == sum(sizes)


def test_a_message_larger_than_the_multipart_threshold_round_trips(store, bucket, tmp_path):
    """65 MiB: over the 64 MiB line where S3 switches to a multipart upload."""
    data = os.urandom(65 * MiB)
    key, sha = put(store, bucket, tmp_path, data)

    assert store.verify(bucket, key, sha) == len(data)
    assert store.bucket_size(bucket) == len(data)
    if isinstance(store, S3Store):
        etag = store.client.head_object(Bucket=bucket, Key=key)["ETag"]
        assert "-" in etag, f"expected a multipart upload, got ETag {etag}"


def test_put_into_a_missing_bucket_is_a_storage_error(store, tmp_path):
    path, sha = make_file(tmp_path, b"x")
    with pytest.raises(StorageError):
        store.put_file(f"missing-{uuid.uuid4().hex[:12]}", raw_key(sha), path, sha)


@pytest.mark.parametrize("name", ["", "a/b", "../escape"])
def test_invalid_bucket_names_are_refused(store, name):
    with pytest.raises(StorageError):
        store.create_bucket(name)


# --- the folder store ---------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> FolderStore:
    store = FolderStore(tmp_path / "buckets")
    store.create_bucket("tenant-a")
    return store


def test_a_new_bucket_has_the_folder_of_every_object_the_pipeline_stores(folder):
    """raw (reports, originals), pack (the ingest's packs) and text (extracted
    text): storing one never creates a folder, a mkdir and a larger flush per message."""
    from infra.storage import pack_key, text_key

    for n in range(256):
        sha = f"{n:02x}" + hashlib.sha256(bytes([n])).hexdigest()[2:]
        for key in (raw_key(sha), pack_key(sha), text_key(sha)):
            assert (folder.root / "tenant-a" / key).parent.is_dir(), key


def test_folder_store_leaves_no_temporary_after_a_put(folder, tmp_path):
    key, _ = put(folder, "tenant-a", tmp_path, b"hello\r\n")
    assert (folder.root / "tenant-a" / key).is_file()
    assert temporaries(folder) == []


def test_folder_store_objects_are_read_only(folder, tmp_path):
    key, _ = put(folder, "tenant-a", tmp_path, b"hello\r\n")
    assert (folder.root / "tenant-a" / key).stat().st_mode & 0o222 == 0


def test_folder_store_failure_mid_copy_leaves_no_object_and_no_temporary(folder, tmp_path, monkeypatch):
    """Across filesystems the source cannot be hard-linked and is copied."""
    path, sha = make_file(tmp_path, os.urandom(3 * MiB))

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    def copy_then_fail(src, dst, length=0):
        dst.write(src.read(MiB))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "link", cross_device)
    monkeypatch.setattr(storage.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(StorageError, match="No space left"):
        folder.put_file("tenant-a", raw_key(sha), path, sha)

    assert not folder.exists("tenant-a", raw_key(sha))
    assert temporaries(folder) == []

    monkeypatch.undo()  # the disk has room again: the retry succeeds
    folder.put_file("tenant-a", raw_key(sha), path, sha)
    assert folder.verify("tenant-a", raw_key(sha), sha) == 3 * MiB


def test_folder_store_copies_when_it_cannot_link(folder, tmp_path, monkeypatch):
    def cross_device(src, dst, *args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(storage.os, "link", cross_device)
    data = os.urandom(2 * MiB + 7)
    key, sha = put(folder, "tenant-a", tmp_path, data)
    assert folder.read_verified("tenant-a", key, sha) == data
    assert temporaries(folder) == []


def test_folder_store_failure_before_the_rename_leaves_no_object_and_no_temporary(folder, tmp_path, monkeypatch):
    path, sha = make_file(tmp_path, b"hello\r\n")

    def replace_fails(src, dst, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "replace", replace_fails)
    with pytest.raises(StorageError, match="Input/output error"):
        folder.put_file("tenant-a", raw_key(sha), path, sha)

    assert not folder.exists("tenant-a", raw_key(sha))
    assert temporaries(folder) == []
    assert path.read_bytes() == b"hello\r\n", "the source is left as it was"


def test_folder_store_ignores_stray_temporaries_in_bucket_size(folder, tmp_path):
    """A crash between write and rename leaves a `.tmp-` file; it is not an object."""
    put(folder, "tenant-a", tmp_path, b"12345")
    (folder.root / "tenant-a" / "raw" / ".tmp-crashed").write_bytes(b"partial")
    assert folder.bucket_size("tenant-a") == 5


@pytest.mark.parametrize("name", [".hidden", ".."])
def test_folder_store_refuses_dot_bucket_names(folder, name):
    with pytest.raises(StorageError):
        folder.create_bucket(name)


@pytest.mark.parametrize(
    "key", ["../tenant-b/raw/x", "/etc/passwd", "raw/../../tenant-b/x", "..", ".", "raw/./x", "raw//x", "raw/x/"]
)
def test_folder_store_refuses_keys_that_escape_the_bucket(folder, tmp_path, key):
    path, sha = make_file(tmp_path, b"x")
    with pytest.raises(StorageError):
        folder.put_file("tenant-a", key, path, sha)
    with pytest.raises(StorageError):
        folder.read_verified("tenant-a", key, sha)
    with pytest.raises(StorageError):
        folder.read_verified("tenant-a", key, sha, 0, 1)  # a range too


def test_folder_store_key_check_refuses_exactly_the_empty_dot_and_dotdot_parts(folder):
    """The substring check of `_path` against the rule it implements, on every
    key of up to four parts drawn from the tricky ones."""
    import itertools

    pieces = ["", ".", "..", "...", ".a", "a.", "a..b", "x", "raw", "ab.json"]
    for n in range(1, 5):
        for parts in itertools.product(pieces, repeat=n):
            key = "/".join(parts)
            bad = any(part in ("", ".", "..") for part in parts)
            try:
                path = folder._path("tenant-a", key)
            except StorageError:
                assert bad, key
            else:
                assert not bad, key
                assert path == os.path.join(folder.root, "tenant-a", key)


def test_folder_store_refuses_an_empty_key(folder, tmp_path):
    path, sha = make_file(tmp_path, b"x")
    with pytest.raises(StorageError):
        folder.put_file("tenant-a", "", path, sha)


def test_folder_store_on_an_unwritable_root_fails_ping(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError):
        FolderStore(blocker / "buckets").ping()


# --- S3 when the server is away ------------------------------------------


@pytest.fixture
def unreachable_s3(monkeypatch) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return S3Store(f"http://127.0.0.1:{free_port()}", "us-east-1")


def test_s3_on_a_closed_port_fails_ping_quickly_with_a_storage_error(unreachable_s3):
    started = time.monotonic()
    with pytest.raises(StorageError, match="not reachable"):
        unreachable_s3.ping()
    assert time.monotonic() - started < 10


def test_s3_on_a_closed_port_fails_put_quickly_with_a_storage_error(unreachable_s3, tmp_path):
    path, sha = make_file(tmp_path, b"x")
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot store"):
        unreachable_s3.put_file("tenant-a", raw_key(sha), path, sha)
    assert time.monotonic() - started < 10


def test_s3_on_a_closed_port_fails_reads_with_a_storage_error(unreachable_s3):
    sha = "0" * 64
    with pytest.raises(StorageError):
        unreachable_s3.read_verified("tenant-a", raw_key(sha), sha)
    with pytest.raises(StorageError):
        unreachable_s3.exists("tenant-a", raw_key(sha))


def test_folder_store_copies_unless_the_caller_hands_the_file_over(tmp_path):
    """A stored object must never change when the caller later rewrites its own file."""
    store = FolderStore(tmp_path / "buckets")
    store.create_bucket("tenant-a")
    path, sha = make_file(tmp_path, b"original bytes")
    store.put_file("tenant-a", raw_key(sha), path, sha)
    path.write_bytes(b"rewritten by the caller")
    assert store.read_verified("tenant-a", raw_key(sha), sha) == b"original bytes"
    handed, sha2 = make_file(tmp_path, b"handed over")
    store.put_file("tenant-a", raw_key(sha2), handed, sha2, consume=True)
    assert os.stat(handed).st_ino == os.stat(tmp_path / "buckets" / "tenant-a" / raw_key(sha2)).st_ino


def test_put_many_stores_every_object_durably_and_skips_existing_ones(store, tmp_path):
    """The group commit the worker uses: several objects, one flush (folder) or parallel PUTs (S3)."""
    import hashlib

    store.create_bucket("tenant-a")
    blobs = [f"object {i}".encode() for i in range(5)]
    items = [("tenant-a", raw_key(hashlib.sha256(b).hexdigest()), b, hashlib.sha256(b).hexdigest()) for b in blobs]
    store.put_many(items + items[:2])  # duplicates within one batch are fine
    store.put_many(items)  # and so is storing them again
    for _, key, data, sha in items:
        assert store.read_verified("tenant-a", key, sha) == data


def test_folder_put_many_refuses_bytes_that_do_not_match_their_hash_and_leaves_nothing(tmp_path):
    import hashlib

    store = FolderStore(tmp_path / "buckets")
    store.create_bucket("tenant-a")
    good = b"good"
    sha = hashlib.sha256(good).hexdigest()
    with pytest.raises(IntegrityError):
        store.put_many([("tenant-a", raw_key(sha), good, sha), ("tenant-a", raw_key("0" * 64), b"bad", "0" * 64)])
    leftovers = [p for p in (tmp_path / "buckets").rglob("*") if p.is_file()]
    assert all(not p.name.startswith(".tmp-") for p in leftovers)
    with pytest.raises(StorageError):
        store.put_many([("no-such-bucket", raw_key(sha), good, sha)])


def test_a_range_of_an_object_reads_back_verified(store, bucket, tmp_path):
    data = b"header\r\n" + os.urandom(3 * MiB) + b"\r\ntrailer"
    key, _ = put(store, bucket, tmp_path, data)
    inner = data[8 : 8 + 3 * MiB]
    sha = hashlib.sha256(inner).hexdigest()
    assert store.read_verified(bucket, key, sha, 8, 3 * MiB) == inner
    assert store.verify(bucket, key, sha, 8, 3 * MiB) == 3 * MiB
    assert b"".join(store.iter_bytes(bucket, key, len(data) - 7)) == b"trailer"
    assert b"".join(store.iter_bytes(bucket, key, 0, 6)) == b"header"
    assert b"".join(store.iter_bytes(bucket, key, 3, 0)) == b""


def test_a_range_that_does_not_hash_to_its_sha256_is_refused(store, bucket, tmp_path):
    data = b"0123456789" * 100
    key, _ = put(store, bucket, tmp_path, data)
    sha = hashlib.sha256(data[10:20]).hexdigest()
    with pytest.raises(IntegrityError):
        store.read_verified(bucket, key, sha, 11, 10)  # one byte off
    with pytest.raises(IntegrityError):
        store.read_verified(bucket, key, sha, 10, 9)  # one byte short


def test_a_range_past_the_end_of_an_object_is_refused(store, bucket, tmp_path):
    data = b"short object"
    key, _ = put(store, bucket, tmp_path, data)
    with pytest.raises(StorageError):  # the folder store reads short, S3 answers 416: both refused
        store.read_verified(bucket, key, hashlib.sha256(data).hexdigest(), 4, len(data))


def test_an_unversioned_bucket_really_loses_a_deleted_object_and_a_second_delete_is_no_error(store, tmp_path):
    name = f"held-{uuid.uuid4().hex[:12]}"
    store.create_bucket(name, versioned=False)
    key, _ = put(store, name, tmp_path, b"held until its domain is verified")
    assert store.exists(name, key)
    store.delete(name, key)
    assert not store.exists(name, key)
    store.delete(name, key)
    if isinstance(store, S3Store):  # no older version left behind to read back
        versions = store.client.list_object_versions(Bucket=name).get("Versions", [])
        assert [v for v in versions if v["Key"] == key] == []


def test_deleting_a_key_outside_its_folder_bucket_is_refused(tmp_path):
    store = FolderStore(tmp_path)
    store.create_bucket("held", versioned=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_bytes(b"a tenant's")
    with pytest.raises(StorageError):
        store.delete("held", "../other/x")
    assert (tmp_path / "other" / "x").exists()
