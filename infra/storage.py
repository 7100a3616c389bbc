"""Object storage: one bucket per tenant, immutable content-addressed objects.

Two implementations behind one interface: a folder per bucket on the
embedded default and S3 (or any S3-compatible store) at scale.  `put_file`
returns only once the object is durable: an fsync'd file renamed into
place (and its directory fsync'd), or a completed PUT.  Every read checks
the SHA-256 that the database recorded.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from django.conf import settings

CHUNK = 1024 * 1024


class StorageError(Exception):
    """The store could not do what was asked; callers answer 451 / retry."""


class IntegrityError(StorageError):
    """An object's bytes do not match the hash the database recorded."""


def raw_key(sha256: str) -> str:
    return f"raw/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    def create_bucket(self, bucket: str) -> None:
        raise NotImplementedError

    def put_file(self, bucket: str, key: str, path: Path, sha256: str, *, consume: bool = False) -> None:
        """Store the file's bytes under key; durable when it returns.

        With `consume` the caller hands the file over (it will only delete
        it, never write to it again), so a store may adopt it without a copy.
        """
        raise NotImplementedError

    def put_many(self, items: list[tuple[str, str, bytes, str]]) -> None:
        """Store several (bucket, key, bytes, sha256) objects; all durable when it
        returns, StorageError when any could not be stored."""
        import tempfile

        for bucket, key, data, sha256 in items:
            with tempfile.NamedTemporaryFile(prefix="archiva-put-") as tmp:
                tmp.write(data)
                tmp.flush()
                self.put_file(bucket, key, Path(tmp.name), sha256)

    def iter_bytes(self, bucket: str, key: str) -> Iterator[bytes]:
        raise NotImplementedError

    def exists(self, bucket: str, key: str) -> bool:
        raise NotImplementedError

    def ping(self) -> None:
        """Raise StorageError unless the store answers."""
        raise NotImplementedError

    def bucket_size(self, bucket: str) -> int:
        raise NotImplementedError

    def read_verified(self, bucket: str, key: str, sha256: str) -> bytes:
        """The object's bytes; IntegrityError if they do not hash to sha256."""
        digest = hashlib.sha256()
        parts = []
        for chunk in self.iter_bytes(bucket, key):
            digest.update(chunk)
            parts.append(chunk)
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"{bucket}/{key}: stored bytes do not match sha256 {sha256}")
        return b"".join(parts)

    def verify(self, bucket: str, key: str, sha256: str) -> int:
        """Stream the object, check its hash, return its size."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.iter_bytes(bucket, key):
            digest.update(chunk)
            size += len(chunk)
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"{bucket}/{key}: stored bytes do not match sha256 {sha256}")
        return size


def _load_syncfs():
    """Linux's syncfs(2), which flushes one filesystem; None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


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

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise StorageError(f"invalid bucket name {bucket!r}")
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"invalid key {key!r}")
        return self._bucket(bucket) / key

    def create_bucket(self, bucket: str) -> None:
        try:
            self._bucket(bucket).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create bucket {bucket}: {exc}") from exc

    def put_file(self, bucket: str, key: str, path: Path, sha256: str, *, consume: bool = False) -> None:
        target = self._path(bucket, key)
        if not self._bucket(bucket).is_dir():
            raise StorageError(f"bucket {bucket} does not exist")
        try:
            if target.exists():
                return  # content-addressed: the same key holds the same bytes
            target.parent.mkdir(parents=True, exist_ok=True)
            # Make a private temporary next to the target, fsync it, then
            # rename: a reader never sees a partial object, and a crash
            # leaves at most a stray temporary.  A consumed source on the same
            # filesystem becomes the temporary by a hard link (no copy).
            tmp_name = str(target.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
            try:
                self._link_or_copy(path, tmp_name, link=consume)
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot store {bucket}/{key}: {exc}") from exc

    def put_many(self, items: list[tuple[str, str, bytes, str]]) -> None:
        """Group commit: write every new object to a temporary, one `syncfs`,
        rename them all into place, one more `syncfs`.  Two flushes for the
        whole batch instead of two fsyncs per object; a reader still never
        sees a partial object."""
        staged: list[tuple[str, Path]] = []
        try:
            for bucket, key, data, sha256 in items:
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise IntegrityError(f"{bucket}/{key}: bytes to store do not match sha256 {sha256}")
                target = self._path(bucket, key)
                if not self._bucket(bucket).is_dir():
                    raise StorageError(f"bucket {bucket} does not exist")
                if target.exists() or any(t == target for _, t in staged):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp_name = str(target.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
                staged.append((tmp_name, target))
                with open(tmp_name, "xb") as out:
                    out.write(data)
                os.chmod(tmp_name, 0o440)
            if not staged:
                return
            self._sync(Path(t) for t, _ in staged)
            for tmp_name, target in staged:
                os.replace(tmp_name, target)
            self._sync(target.parent for _, target in staged)
        except OSError as exc:
            raise StorageError(f"cannot store {len(items)} objects: {exc}") from exc
        finally:
            for tmp_name, _ in staged:
                Path(tmp_name).unlink(missing_ok=True)  # gone already when renamed

    def _sync(self, paths) -> None:
        """Flush the filesystem that holds the buckets (each path where syncfs is missing)."""
        if _syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed")
            finally:
                os.close(fd)
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

    @staticmethod
    def _link_or_copy(source: Path, tmp_name: str, link: bool) -> None:
        """An fsync'd, read-only file at tmp_name with source's bytes."""
        if link:
            try:
                os.link(source, tmp_name)
                fd = os.open(tmp_name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.chmod(tmp_name, 0o440)
                return
            except OSError:  # another filesystem, or no hard links: copy
                Path(tmp_name).unlink(missing_ok=True)
        with open(tmp_name, "xb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o440)

    def iter_bytes(self, bucket: str, key: str) -> Iterator[bytes]:
        try:
            with open(self._path(bucket, key), "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk
        except FileNotFoundError as exc:
            raise StorageError(f"{bucket}/{key} is missing") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {bucket}/{key}: {exc}") from exc

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

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

    def __init__(self, endpoint_url: str | None, region: str):
        import boto3
        from botocore.config import Config

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

    def _errors(self):
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, Boto3Error, OSError)

    def create_bucket(self, bucket: str) -> None:
        try:
            kwargs = {"Bucket": bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.client.create_bucket(**kwargs)
            except self.client.exceptions.BucketAlreadyOwnedByYou:
                pass
            self.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        except self._errors() as exc:
            raise StorageError(f"cannot create bucket {bucket}: {exc}") from exc

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
                        Bucket=bucket, Key=key, Body=body, ChecksumSHA256=checksum, Metadata={"sha256": sha256}
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

    def put_many(self, items: list[tuple[str, str, bytes, str]]) -> None:
        """Parallel PUTs of in-memory objects; each completed PUT is durable."""
        from concurrent.futures import ThreadPoolExecutor

        def put(item):
            bucket, key, data, sha256 = item
            checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
            try:
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=data, ChecksumSHA256=checksum, Metadata={"sha256": sha256}
                )
            except self._errors() as exc:
                raise StorageError(f"cannot store {bucket}/{key}: {exc}") from exc

        with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
            list(pool.map(put, items))

    def iter_bytes(self, bucket: str, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
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


@cache
def get_store() -> BlobStore:
    """The deployment's store, chosen by settings (cached per process)."""
    if settings.ARCHIVA_STORAGE == "s3":
        return S3Store(settings.ARCHIVA_S3_ENDPOINT, settings.ARCHIVA_S3_REGION)
    return FolderStore(settings.DATA_DIR / "buckets")


def bucket_name_for(tenant_public_id) -> str:
    prefix = settings.ARCHIVA_S3_BUCKET_PREFIX if settings.ARCHIVA_STORAGE == "s3" else "tenant-"
    return f"{prefix}{tenant_public_id.hex}"[:63]
