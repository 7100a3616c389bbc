"""Object storage: one bucket per tenant, immutable content-addressed objects.

Two implementations behind one interface: a folder per bucket on the
embedded default and S3 (or any S3-compatible store) at scale.  Writes
(`put_objects`, and `put_file` / `put_many` on top of it) return only once
the objects are durable: flushed files renamed into place, or completed
PUTs.  Every read checks the SHA-256 that the database recorded.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings

CHUNK = 1024 * 1024

# (bucket, key, the object's bytes or a file holding them, their sha256); the
# sha256 may be None for bytes named otherwise (a pack, see `pack_key`)
Item = tuple[str, str, "bytes | Path", "str | None"]
_T = TypeVar("_T")


class StorageError(Exception):
    """The store could not do what was asked; callers answer 451 / retry."""


class IntegrityError(StorageError):
    """An object's bytes do not match the hash the database recorded."""


class ObjectLocked(StorageError):
    """The store refuses to delete an object: its Object Lock retention has not passed, or it is under legal hold."""


# S3 Object Lock has no "forever": a retention kept forever locks objects
# for a century (the longest default retention S3 takes is 100 years).
LOCK_FOREVER_DAYS = 36500


def raw_key(sha256: str) -> str:
    """Where a received message lives in its tenant's bucket.

    One level of 256 folders: a busy tenant soon has them all, so storing a
    message rarely creates a folder (each one is a journal operation the
    ingest would wait for).  Rows keep the key they were stored under, so
    objects stored under an earlier layout stay readable.
    """
    return f"{raw_folder(sha256)}/{sha256}"


def raw_folder(sha256: str) -> str:
    return f"raw/{sha256[:2]}"


def pack_key(name: str) -> str:
    """Where a pack of received messages lives: named by the SHA-256 of its
    index (`ingest.pack`), which is not the SHA-256 of its bytes, so apart from
    `raw/`, where every object's name is."""
    return f"pack/{name[:2]}/{name}"


def text_key(sha256: str) -> str:
    """Where a message's extracted text (archive.documents.content_json) lives:
    one level of 256 folders, as for `raw_key`.  Two levels (65,536 folders)
    made nearly every text object of a young tenant create a folder: a failed
    open, a mkdir and a larger flush per message.  Messages keep the key their
    text was stored under (`Message.text_key`), so texts stored under the
    earlier layout (text/xx/yy/) stay readable."""
    return f"text/{sha256[:2]}/{sha256}.json"


# Every folder raw_key, pack_key and text_key name, made with the bucket.
STORE_FOLDERS = [f"{top}/{n:02x}" for top in ("raw", "pack", "text") for n in range(256)]


class BlobStore:
    # The Object Lock mode of tenant buckets ("GOVERNANCE", "COMPLIANCE"), "" without WORM.
    object_lock = ""

    def create_bucket(self, bucket: str, *, versioned: bool = True) -> None:
        """Make the bucket (idempotent). A tenant's bucket is versioned; an
        area whose objects must really go when deleted (held mail) is not.
        With `object_lock`, a versioned bucket is made with Object Lock and
        a default retention of LOCK_FOREVER_DAYS until a retention policy sets one."""
        raise NotImplementedError

    def set_default_retention(self, bucket: str, days: int) -> None:
        """Lock objects stored from now on for `days` (S3 Object Lock's default
        retention); nothing without `object_lock`."""

    def set_legal_hold(self, bucket: str, key: str, on: bool) -> None:
        """Set or clear the object's legal hold (every version); nothing without `object_lock`."""

    def purge(self, bucket: str, key: str) -> None:
        """Remove the object for good, every version of it (retention's
        deletion; `delete` only hides it in a versioned bucket).  ObjectLocked
        when the store refuses because a version is still locked; a missing
        object is no error."""
        self.delete(bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; one that is not there is no error."""
        raise NotImplementedError

    def put_file(self, bucket: str, key: str, path: Path, sha256: str, *, consume: bool = False) -> None:
        """Store the file's bytes under key; durable when it returns.

        With `consume` the caller hands the file over (it will only delete
        it, never write to it again), so a store may adopt it without a copy.
        """
        raise NotImplementedError

    def put_objects(
        self, items: Sequence[Item], *, consume: bool = False, durable: bool = True
    ) -> list[Exception | None]:
        """Store several (bucket, key, bytes or file, sha256) objects at once;
        all durable when it returns.  One result per item, None where stored,
        so one tenant's missing bucket does not fail the others'.  With
        `consume`, files are handed over as in `put_file`.  `durable=False`
        lets a store leave flushing to `sync_filesystems` (the folder store);
        the others are durable anyway.  Bytes are checked against their
        sha256 before they are written (an S3 store checks them on upload).
        An item of bytes whose key is not their SHA-256 (a pack) may give
        None for it: a store hashes them only if it needs to (S3, for the
        upload's checksum)."""
        raise NotImplementedError

    def put_many(self, items: Sequence[Item]) -> None:
        """`put_objects` for callers that need all or nothing: the first error is raised."""
        for error in self.put_objects(items):
            if error is not None:
                raise error

    def iter_bytes(self, bucket: str, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The object's bytes in chunks; with `length`, only that range from `offset`
        (a message inside a pack)."""
        raise NotImplementedError

    def exists(self, bucket: str, key: str) -> bool:
        raise NotImplementedError

    def ping(self) -> None:
        """Raise StorageError unless the store answers."""
        raise NotImplementedError

    def bucket_size(self, bucket: str) -> int:
        raise NotImplementedError

    def read_verified(self, bucket: str, key: str, sha256: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes (or its range); IntegrityError if they do not hash to sha256."""
        return b"".join(self._checked(bucket, key, sha256, offset, length))

    def verify(self, bucket: str, key: str, sha256: str, offset: int = 0, length: int | None = None) -> int:
        """Stream the object (or its range), check its hash, return its size."""
        return sum(len(chunk) for chunk in self._checked(bucket, key, sha256, offset, length))

    def _checked(self, bucket: str, key: str, sha256: str, offset: int, length: int | None) -> Iterator[bytes]:
        """The chunks of `iter_bytes`; IntegrityError after the last if they do not hash to sha256."""
        digest = hashlib.sha256()
        for chunk in self.iter_bytes(bucket, key, offset, length):
            digest.update(chunk)
            yield chunk
        if digest.hexdigest() != sha256:
            raise _mismatch(bucket, key, sha256)


def _mismatch(bucket: str, key: str, sha256: str) -> IntegrityError:
    return IntegrityError(f"{bucket}/{key}: stored bytes do not match sha256 {sha256}")


def _check_hash(bucket: str, key: str, data: bytes, sha256: str) -> None:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{bucket}/{key}: bytes to store do not match sha256 {sha256}")


def _holds(target: str, payload: bytes | Path) -> bool:
    """Whether target already holds payload (content-addressed: same key, same
    bytes; a size that differs is an object cut short, to be replaced)."""
    try:
        size = os.stat(target).st_size
    except FileNotFoundError:
        return False
    return size == (len(payload) if isinstance(payload, bytes) else payload.stat().st_size)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), which flushes one filesystem; None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def sync_filesystems(paths: Iterable[Path]) -> None:
    """Flush the filesystems holding these folders, each once (`syncfs`).

    Where syncfs is missing there is nothing to do: stores then flush every
    object themselves (`put_objects` ignores `durable=False`)."""
    if _syncfs is None:
        return
    seen: set[int] = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            device = os.fstat(fd).st_dev
            if device not in seen:
                seen.add(device)
                if _syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), f"syncfs of {path} failed")
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderStore(BlobStore):
    """A folder per bucket under `<root>`; objects are files named by key."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._folders: dict[str, str] = {}  # bucket -> its folder, as a string (`_path`)

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise StorageError(f"invalid bucket name {bucket!r}")
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> str:
        """The object's file, as a string: pathlib interns every part of a
        path (`sys.intern`), and each object key is a new part, so an export
        or a scrub over 100,000 objects would grow the interpreter's intern
        table by as many.  A key with an empty, "." or ".." part is refused.

        It runs for every object the ingest and the worker touch, so the
        bucket's folder is remembered and the key is checked with three
        substring tests instead of a split (an empty part is a "//" in the
        key wrapped in slashes, as are a leading and a trailing slash)."""
        folder = self._folders.get(bucket)
        if folder is None:
            folder = self._folders.setdefault(bucket, str(self._bucket(bucket)))
        wrapped = f"/{key}/"
        if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
            raise StorageError(f"invalid key {key!r}")
        return f"{folder}/{key}"

    def create_bucket(self, bucket: str, *, versioned: bool = True) -> None:
        """The bucket's folder and the 768 folders of `raw_key`, `pack_key` and `text_key`,
        made now: a new tenant's first few hundred commit batches would
        otherwise each create one, a mkdir and a larger flush that the
        senders wait for."""
        folder = self._bucket(bucket)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in STORE_FOLDERS:
                os.makedirs(folder / name, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create bucket {bucket}: {exc}") from exc

    def delete(self, bucket: str, key: str) -> None:
        try:
            os.unlink(self._path(bucket, key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {bucket}/{key}: {exc}") from exc

    def put_file(self, bucket: str, key: str, path: Path, sha256: str, *, consume: bool = False) -> None:
        [error] = self.put_objects([(bucket, key, path, sha256)], consume=consume)
        if error is not None:
            raise error

    def put_objects(
        self, items: Sequence[Item], *, consume: bool = False, durable: bool = True
    ) -> list[Exception | None]:
        """Group commit: two `syncfs` for the whole batch instead of two fsyncs per object.

        Each new object is first a read-only temporary next to its target
        (bytes written, a consumed file hard-linked, another file copied); the
        first flush makes their bytes durable, then each is renamed into place
        and the second flush makes the names durable.  A reader never sees a
        partial object; a crash leaves at most stray temporaries.

        With `durable=False` (Linux) both flushes are left to the caller, who
        must call `sync_filesystems` before relying on the objects: the ingest
        flushes once per batch, after recording its rows, so one flush covers
        the objects and the embedded database.  Until then a power loss (not a
        process crash) may leave an object short; an object whose size is not
        the one being stored is therefore replaced, never trusted.
        """
        durable = durable or _syncfs is None
        results: list[Exception | None] = [None] * len(items)
        # Plain strings and os calls: this runs once per received message.
        staged: dict[str, tuple[int, str]] = {}  # target -> (item, its temporary)
        same: list[tuple[int, int]] = []  # (item, earlier item with the same target)
        try:
            for n, (bucket, key, payload, sha256) in enumerate(items):
                try:
                    target = self._path(bucket, key)
                    if target in staged:
                        same.append((n, staged[target][0]))
                    elif not _holds(target, payload):
                        staged[target] = (n, self._temporary(bucket, target, payload, sha256, consume))
                except StorageError as exc:
                    results[n] = exc
                except OSError as exc:
                    results[n] = StorageError(f"cannot store {bucket}/{key}: {exc}")
            if staged:
                self._place_all(items, staged, results, durable)
        finally:
            for _, tmp in staged.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)  # gone already when renamed
        for n, first in same:
            results[n] = results[first]
        return results

    def _temporary(self, bucket: str, target: str, payload: bytes | Path, sha256: str | None, consume: bool) -> str:
        """A read-only temporary next to target with payload's bytes (not yet flushed)."""
        if isinstance(payload, bytes) and sha256 is not None:
            _check_hash(bucket, target, payload, sha256)
        # Unique enough with O_EXCL (a clash fails this store, never overwrites); `random`
        # reseeds in a forked process and costs no getrandom(2) call.
        tmp = f"{os.path.dirname(target)}/.tmp-{os.getpid()}-{random.getrandbits(96):024x}"
        if isinstance(payload, Path) and consume:
            try:
                os.chmod(payload, 0o440)
                self._in_folder(bucket, target, os.link, payload, tmp)  # the handed-over file itself: no copy
                return tmp
            except OSError:  # another filesystem, or no hard links: copy
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        fd = self._in_folder(bucket, target, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
        try:
            if isinstance(payload, bytes):
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
            else:
                with open(payload, "rb") as src, open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(src, out, CHUNK)
        except BaseException:
            os.unlink(tmp)  # e.g. the disk filled up: no partial temporary is left
            raise
        finally:
            os.close(fd)
        return tmp

    def _in_folder(self, bucket: str, target: str, call: Callable[..., _T], *args: Any) -> _T:
        """call(*args), creating target's folder first if it is missing (never a missing bucket)."""
        try:
            return call(*args)
        except FileNotFoundError:
            if not self._bucket(bucket).is_dir():
                raise StorageError(f"bucket {bucket} does not exist") from None
            os.makedirs(os.path.dirname(target), exist_ok=True)
            return call(*args)

    def _place_all(
        self, items: Sequence[Item], staged: dict[str, tuple[int, str]], results: list[Exception | None], durable: bool
    ) -> None:
        if durable:
            try:
                self._sync(Path(tmp) for _, tmp in staged.values())  # the bytes
            except OSError as exc:
                for n, _ in staged.values():
                    results[n] = StorageError(f"cannot flush {len(staged)} objects: {exc}")
                return
        placed: list[int] = []
        for target, (n, tmp) in staged.items():
            try:
                os.replace(tmp, target)
                placed.append(n)
            except OSError as exc:
                results[n] = StorageError(f"cannot store {items[n][0]}/{items[n][1]}: {exc}")
        if durable:
            try:
                self._sync(Path(target).parent for target in staged)  # the names
            except OSError as exc:
                for n in placed:
                    results[n] = StorageError(f"cannot flush {len(placed)} objects: {exc}")

    def _sync(self, paths: Iterable[Path]) -> None:
        """Flush the filesystem that holds the buckets (each path where syncfs is missing)."""
        if _syncfs is not None:
            sync_filesystems([self.root])
            return
        for path in dict.fromkeys(paths):
            if path.is_dir():
                _fsync_dir(path)
            else:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def read_verified(self, bucket: str, key: str, sha256: str, offset: int = 0, length: int | None = None) -> bytes:
        """A range of known length (a packed message: every report the worker
        reads) in one pread(2), without a buffered file object and a chunk
        loop; anything else streams as `BlobStore.read_verified` does."""
        if length is None or length > CHUNK:
            return super().read_verified(bucket, key, sha256, offset, length)
        with self._reading(bucket, key):
            fd = os.open(self._path(bucket, key), os.O_RDONLY)
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        if hashlib.sha256(data).hexdigest() != sha256:  # a short read fails here too
            raise _mismatch(bucket, key, sha256)
        return data

    @staticmethod
    @contextlib.contextmanager
    def _reading(bucket: str, key: str) -> Iterator[None]:
        """An OSError while reading an object, as the StorageError that names it."""
        try:
            yield
        except FileNotFoundError as exc:
            raise StorageError(f"{bucket}/{key} is missing") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {bucket}/{key}: {exc}") from exc

    def iter_bytes(self, bucket: str, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        with self._reading(bucket, key), open(self._path(bucket, key), "rb") as fh:
            fh.seek(offset)
            left = length
            while left is None or left > 0:
                chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break  # short: the caller's hash check fails
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def exists(self, bucket: str, key: str) -> bool:
        return os.path.isfile(self._path(bucket, key))

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".readyz"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not writable: {exc}") from exc

    def bucket_size(self, bucket: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self._bucket(bucket)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if not f.startswith(".tmp-"))
        return total


class S3Store(BlobStore):
    """S3 or an S3-compatible store through boto3."""

    def __init__(self, endpoint_url: str | None, region: str, object_lock: str = ""):
        import boto3
        from botocore.config import Config

        self._pool: ThreadPoolExecutor | None = None

        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"} if endpoint_url else {},
                max_pool_connections=50,
            ),
        )
        self.region = region
        self.object_lock = object_lock if object_lock in ("GOVERNANCE", "COMPLIANCE") else ""

    def _errors(self) -> tuple[type[Exception], ...]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, Boto3Error, OSError)

    def create_bucket(self, bucket: str, *, versioned: bool = True) -> None:
        try:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            locked = versioned and bool(self.object_lock)
            if locked:  # only at creation: Object Lock also turns versioning on
                kwargs["ObjectLockEnabledForBucket"] = True
            try:
                self.client.create_bucket(**kwargs)
            except self.client.exceptions.BucketAlreadyOwnedByYou:
                # Made before, with the settings of then (Object Lock can only be
                # asked for at creation; a policy change resets its retention).
                locked = False
            if locked:
                self.set_default_retention(bucket, LOCK_FOREVER_DAYS)
            elif versioned:
                self.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        except self._errors() as exc:
            raise StorageError(f"cannot create bucket {bucket}: {exc}") from exc

    def set_default_retention(self, bucket: str, days: int) -> None:
        if not self.object_lock:
            return
        rule = {"DefaultRetention": {"Mode": self.object_lock, "Days": max(1, min(days, LOCK_FOREVER_DAYS))}}
        try:
            self.client.put_object_lock_configuration(
                Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
            )
        except self._errors() as exc:
            raise StorageError(f"cannot set the default retention of {bucket}: {exc}") from exc

    def set_legal_hold(self, bucket: str, key: str, on: bool) -> None:
        if not self.object_lock:
            return
        status = {"Status": "ON" if on else "OFF"}
        try:
            for version in self._versions(bucket, key):
                self.client.put_object_legal_hold(Bucket=bucket, Key=key, VersionId=version, LegalHold=status)
        except self._errors() as exc:
            raise StorageError(f"cannot set the legal hold of {bucket}/{key}: {exc}") from exc

    def purge(self, bucket: str, key: str) -> None:
        """Delete each version by its id (and any delete marker): in a versioned
        bucket a plain DELETE only adds a marker and keeps the bytes.  Never
        bypasses GOVERNANCE retention: a locked version stays, and ObjectLocked says so."""
        from botocore.exceptions import ClientError

        try:
            for version in self._versions(bucket, key, markers=True):  # "null" in an unversioned bucket
                try:
                    self.client.delete_object(Bucket=bucket, Key=key, VersionId=version)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") == "AccessDenied":
                        raise ObjectLocked(f"{bucket}/{key} is locked: {exc}") from exc
                    raise
        except ObjectLocked:
            raise
        except self._errors() as exc:
            raise StorageError(f"cannot delete {bucket}/{key}: {exc}") from exc

    def _versions(self, bucket: str, key: str, *, markers: bool = False) -> list[str]:
        """The version ids of exactly this key (a prefix listing also finds longer keys)."""
        found: list[str] = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
            entries = page.get("Versions", []) + (page.get("DeleteMarkers", []) if markers else [])
            found += [entry["VersionId"] for entry in entries if entry["Key"] == key and entry.get("VersionId")]
        return found

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=bucket, Key=key)  # S3 answers 204 for a missing key too
        except self._errors() as exc:
            raise StorageError(f"cannot delete {bucket}/{key}: {exc}") from exc

    def put_file(self, bucket: str, key: str, path: Path, sha256: str, *, consume: bool = False) -> None:
        from boto3.s3.transfer import TransferConfig

        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        try:
            size = path.stat().st_size
            if size <= 64 * CHUNK:
                with open(path, "rb") as body:
                    # The store checks the SHA-256 itself and refuses a
                    # corrupted upload.
                    self.client.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=body,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                        Metadata={"sha256": sha256},
                    )
            else:
                self.client.upload_file(
                    str(path),
                    bucket,
                    key,
                    ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
                    Config=TransferConfig(multipart_threshold=64 * CHUNK, multipart_chunksize=16 * CHUNK),
                )
        except self._errors() as exc:
            raise StorageError(f"cannot store {bucket}/{key}: {exc}") from exc

    def put_objects(
        self, items: Sequence[Item], *, consume: bool = False, durable: bool = True
    ) -> list[Exception | None]:
        """Parallel PUTs; each completed PUT is durable, whatever `durable` says."""

        def put(item: Item) -> Exception | None:
            bucket, key, payload, sha256 = item
            try:
                if sha256 is None:  # bytes named otherwise (a pack): the upload is checked all the same
                    assert not isinstance(payload, Path)  # a spooled file always comes with its hash
                    sha256 = hashlib.sha256(payload).hexdigest()
                if isinstance(payload, Path):
                    self.put_file(bucket, key, payload, sha256)
                    return None
                checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
                try:
                    self.client.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=payload,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                        Metadata={"sha256": sha256},
                    )
                except self._errors() as exc:
                    raise StorageError(f"cannot store {bucket}/{key}: {exc}") from exc
                return None
            except StorageError as exc:
                return exc

        if len(items) <= 1:
            return [put(item) for item in items]
        if self._pool is None:  # one pool for the store's life: a batch is a few milliseconds
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="s3-put")
        return list(self._pool.map(put, items))

    def iter_bytes(self, bucket: str, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if length == 0:
            return
        ranged = {} if offset == 0 and length is None else {"Range": _byte_range(offset, length)}
        try:
            body = self.client.get_object(Bucket=bucket, Key=key, **ranged)["Body"]
            yield from body.iter_chunks(CHUNK)
        except self._errors() as exc:
            raise StorageError(f"cannot read {bucket}/{key}: {exc}") from exc

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot check {bucket}/{key}: {exc}") from exc
        except self._errors() as exc:
            raise StorageError(f"cannot check {bucket}/{key}: {exc}") from exc

    def ping(self) -> None:
        try:
            self.client.list_buckets()
        except self._errors() as exc:
            raise StorageError(f"S3 is not reachable: {exc}") from exc

    def bucket_size(self, bucket: str) -> int:
        total = 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                total += sum(obj["Size"] for obj in page.get("Contents", []))
        except self._errors() as exc:
            raise StorageError(f"cannot list {bucket}: {exc}") from exc
        return total


def _byte_range(offset: int, length: int | None) -> str:
    """An HTTP Range header value (RFC 9110 §14.1.2: last byte inclusive)."""
    return f"bytes={offset}-" if length is None else f"bytes={offset}-{offset + length - 1}"


@cache
def get_store() -> BlobStore:
    """The deployment's store, chosen by settings (cached per process)."""
    if settings.ARCHIVA_STORAGE == "s3":
        return S3Store(settings.ARCHIVA_S3_ENDPOINT, settings.ARCHIVA_S3_REGION, settings.ARCHIVA_S3_OBJECT_LOCK)
    return FolderStore(settings.DATA_DIR / "buckets")


def bucket_name_for(tenant_public_id: uuid.UUID) -> str:
    prefix = settings.ARCHIVA_S3_BUCKET_PREFIX if settings.ARCHIVA_STORAGE == "s3" else "tenant-"
    return f"{prefix}{tenant_public_id.hex}"[:63]
