#!/usr/bin/env python3
"""Restore drill: back up a region's PostgreSQL and tenant buckets, restore both
into a fresh database and fresh buckets, and prove the copy complete.

    .venv/bin/python scripts/restore_drill.py \\
        --database-url postgresql://archiva@db:5432/archiva \\
        --s3-endpoint https://s3.internal --bucket-prefix archiva-us- \\
        --workdir /backup/drill-$(date +%F) [--keep] [--report drill.json]

1. Back up: `pg_dump --format=custom` of one exported snapshot, with every
   table's row count taken in that same snapshot; every object of every bucket
   whose name starts with the prefix, copied to WORKDIR with its SHA-256.
2. Restore: `createdb` a fresh database, `pg_restore` into it; fresh buckets
   (`drill-<run>-<n>`) filled from the copies.
3. Verify: every table's row count equals the snapshot's; every object in
   the restored buckets has the size and SHA-256 of the original; and, the
   Archiva check, every delivery recorded in the restored database reads back
   from the restored bucket of its tenant (its slice of the pack object) with
   the SHA-256 the ingest recorded when it answered 250.

Prints a JSON report; exits 0 when everything matched, 1 with each mismatch
named, 2 on bad arguments.  Without --keep the restored database and buckets
are dropped at the end (the backup in WORKDIR stays: it IS the backup).
The database is restored on the same server unless --restore-database-url names
another; the buckets on the same endpoint.  Credentials: boto3's usual chain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import psycopg
from botocore.config import Config
from psycopg import sql


@dataclass
class Backup:
    workdir: Path
    dump: Path
    snapshot_counts: dict[str, int]
    objects: dict[str, dict[str, tuple[int, str]]]  # bucket -> key -> (size, sha256)


@dataclass
class Report:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    buckets: int = 0
    objects: int = 0
    bytes: int = 0
    deliveries_checked: int = 0
    message_objects_checked: int = 0
    restored_database: str = ""
    restored_buckets: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


def s3_client(endpoint: str | None, region: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region,
        config=Config(s3={"addressing_style": "path"} if endpoint else {}, retries={"max_attempts": 5}),
    )


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    tables = conn.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY 1, 2"
    ).fetchall()
    counts = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def list_objects(s3: Any, bucket: str) -> list[tuple[str, int]]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup(database_url: str, s3: Any, bucket_prefix: str, workdir: Path) -> Backup:
    """The database as of one snapshot (with its row counts) and a copy of every bucket with the prefix."""
    workdir.mkdir(parents=True, exist_ok=True)
    dump = workdir / "database.dump"
    with psycopg.connect(database_url, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        counts = table_counts(conn)
        # pg_dump reads the very snapshot the counts came from, while this transaction holds it.
        subprocess.run(
            ["pg_dump", "--format=custom", f"--snapshot={row[0]}", f"--file={dump}", "--dbname", database_url],
            check=True,
        )
        conn.rollback()
    buckets = sorted(
        item["Name"] for item in s3.list_buckets().get("Buckets", []) if item["Name"].startswith(bucket_prefix)
    )
    objects: dict[str, dict[str, tuple[int, str]]] = {}
    for bucket in buckets:
        objects[bucket] = {}
        for key, size in list_objects(s3, bucket):
            target = workdir / "buckets" / bucket / key
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            objects[bucket][key] = (size, sha256_of(target))
    (workdir / "manifest.json").write_text(
        json.dumps({"counts": counts, "objects": {b: {k: list(v) for k, v in o.items()} for b, o in objects.items()}})
    )
    return Backup(workdir=workdir, dump=dump, snapshot_counts=counts, objects=objects)


def restore(backup_: Backup, restore_url: str, s3: Any, run: str) -> tuple[str, dict[str, str]]:
    """A fresh database and fresh buckets from the backup (its files on disk, not the live ones)."""
    name = f"drill_{run}"
    with psycopg.connect(with_database(restore_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
            with_database(restore_url, name),
            str(backup_.dump),
        ],
        check=True,
    )
    mapping = {}
    for number, bucket in enumerate(sorted(backup_.objects)):
        fresh = f"drill-{run}-{number}"
        s3.create_bucket(Bucket=fresh)
        mapping[bucket] = fresh
        folder = backup_.workdir / "buckets" / bucket
        for key in backup_.objects[bucket]:
            s3.upload_file(str(folder / key), fresh, key)
    return name, mapping


def verify(backup_: Backup, restore_url: str, database: str, buckets: dict[str, str], s3: Any, report: Report) -> None:
    with psycopg.connect(with_database(restore_url, database)) as conn:
        restored = table_counts(conn)
        for table, count in sorted(backup_.snapshot_counts.items()):
            if restored.get(table) != count:
                report.problem(f"table {table}: {restored.get(table)} rows restored, {count} backed up")
        report.tables = len(restored)
        report.rows = sum(restored.values())
        deliveries = conn.execute(
            "SELECT d.id, t.bucket, d.storage_key, d.storage_offset, d.size, d.sha256 "
            "FROM ingest_delivery d JOIN tenants_tenant t ON t.id = d.tenant_id ORDER BY d.id"
        ).fetchall()
        # Each archived message's original, decrypted copy and text: a whole
        # object (offset and size NULL) or a range of the worker's pack.
        message_objects = conn.execute(
            " UNION ALL ".join(
                f"SELECT m.id, t.bucket, m.{name}_key, m.{name}_offset, m.{name}_size, m.{name}_sha256 "  # noqa: S608 - our own column names
                f"FROM archive_message m JOIN tenants_tenant t ON t.id = m.tenant_id WHERE m.{name}_key <> ''"
                for name in ("original", "decrypted", "text")
            )
            + " ORDER BY 1"
        ).fetchall()
    for original, fresh in sorted(buckets.items()):
        listed = dict(list_objects(s3, fresh))
        for key, (size, digest) in sorted(backup_.objects[original].items()):
            if key not in listed:
                report.problem(f"{original}/{key}: missing from the restored bucket {fresh}")
                continue
            body = s3.get_object(Bucket=fresh, Key=key)["Body"].read()
            if len(body) != size or hashlib.sha256(body).hexdigest() != digest:
                report.problem(f"{original}/{key}: restored bytes differ from the original (size or sha256)")
            report.bytes += len(body)
            report.objects += 1
        for key in sorted(set(listed) - set(backup_.objects[original])):
            report.problem(f"{fresh}/{key}: in the restored bucket but not in the backup")
    report.buckets = len(buckets)
    report.deliveries_checked += check_rows("delivery", deliveries, buckets, s3, report)
    report.message_objects_checked += check_rows("message", message_objects, buckets, s3, report)


def check_rows(kind: str, rows: list[tuple[Any, ...]], buckets: dict[str, str], s3: Any, report: Report) -> int:
    """`check_stored` for rows of (id, bucket, key, offset, size, sha256),
    each stored span read once however many rows vouch for it (messages
    share a large text object, content-addressed); how many rows were checked."""
    owners: dict[tuple[Any, ...], list[int]] = {}
    for row_id, *where in rows:
        owners.setdefault(tuple(where), []).append(row_id)
    checked = 0
    for (bucket, key, offset, size, digest), ids in owners.items():
        named = ", ".join(str(row_id) for row_id in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        owner = f"{kind} {named}" if len(ids) == 1 else f"{kind}s {named}"
        if check_stored(owner, buckets, bucket, key, offset, size, digest, s3, report):
            checked += len(ids)
    return checked


def check_stored(
    owner: str,
    buckets: dict[str, str],
    bucket: str,
    key: str,
    offset: int | None,
    size: int | None,
    digest: str,
    s3: Any,
    report: Report,
) -> bool:
    """Read what a row vouches for (a whole object, or `size` bytes from
    `offset`) from the restored bucket and check its SHA-256; a problem is
    reported under `owner`.  False when it could not be read at all."""
    fresh = buckets.get(bucket)
    if fresh is None:
        report.problem(f"{owner}: its tenant's bucket {bucket} was not backed up")
        return False
    span = {} if size is None else {"Range": f"bytes={offset or 0}-{(offset or 0) + size - 1}"}
    try:
        part = s3.get_object(Bucket=fresh, Key=key, **span)["Body"].read()
    except s3.exceptions.ClientError as exc:
        report.problem(f"{owner}: {bucket}/{key} unreadable after restore: {exc}")
        return False
    if hashlib.sha256(part).hexdigest() != digest:
        at = "" if size is None else f" at {offset or 0}+{size}"
        report.problem(f"{owner}: {bucket}/{key}{at} does not match its sha256")
    return True


def drop(restore_url: str, database: str, buckets: dict[str, str], s3: Any) -> None:
    with psycopg.connect(with_database(restore_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    for fresh in buckets.values():
        for key, _ in list_objects(s3, fresh):
            s3.delete_object(Bucket=fresh, Key=key)
        s3.delete_bucket(Bucket=fresh)


def drill(args: argparse.Namespace) -> Report:
    s3 = s3_client(args.s3_endpoint, args.s3_region)
    restore_url = args.restore_database_url or args.database_url
    run = args.run or uuid.uuid4().hex[:10]
    report = Report()
    started = time.monotonic()
    copy = backup(args.database_url, s3, args.bucket_prefix, Path(args.workdir))
    report.seconds["backup"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    database, buckets = restore(copy, restore_url, s3, run)
    report.restored_database, report.restored_buckets = database, buckets
    report.seconds["restore"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    try:
        verify(copy, restore_url, database, buckets, s3, report)
        report.seconds["verify"] = round(time.monotonic() - started, 2)
    finally:
        if not args.keep:
            drop(restore_url, database, buckets, s3)
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL"), help="the live database (postgresql://)"
    )
    parser.add_argument("--restore-database-url", help="server to restore on (default: the live one's server)")
    parser.add_argument("--s3-endpoint", default=os.environ.get("ARCHIVA_S3_ENDPOINT"), help="S3-compatible endpoint")
    parser.add_argument("--s3-region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--bucket-prefix", default=os.environ.get("ARCHIVA_S3_BUCKET_PREFIX"), help="e.g. archiva-us-")
    parser.add_argument("--workdir", required=True, help="where the backup is written (an empty or new folder)")
    parser.add_argument("--run", help="name of this drill (letters and digits); default random")
    parser.add_argument("--keep", action="store_true", help="keep the restored database and buckets")
    parser.add_argument("--report", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if not args.database_url or not args.database_url.startswith(("postgresql://", "postgres://")):
        parser.error("--database-url (or DATABASE_URL) must be a postgresql:// URL")
    if not args.bucket_prefix:
        parser.error("--bucket-prefix (or ARCHIVA_S3_BUCKET_PREFIX) is required: the drill copies those buckets")
    if args.run and not args.run.isalnum():
        parser.error("--run takes letters and digits only")
    if Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = drill(args)
    text = json.dumps(report.__dict__, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
