"""One journal report through the running product: the probe of scripts/runtime-check.sh.

    runtime_check_report.py TENANT_ID ADDRESS SUBJECT

Run from .venv-runtime with the environment of the processes it checks (web,
smtpd, worker and beat under scripts/supervise.py): waits until the web app
answers /healthz and the ingest accepts the report over SMTP, then until it is
archived, indexed and found by the product's search, as the tenant's only
report.  With the scale settings it also looks behind the product's back, so
that a fallback cannot pass for the real thing: the report's object must be in
the tenant's bucket (listed through the S3 API with boto3) and its document in
the Elasticsearch index (asked over plain HTTP).  Exits non-zero with the
reason when anything is missing after 90 s.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")

TIMEOUT = 90.0


def send_report(address: str, subject: str, deadline: float) -> None:
    """Retried until the web app and the ingest answer: they are still starting."""
    smtp_port, http_port = int(os.environ["ARCHIVA_SMTP_PORT"]), os.environ["ARCHIVA_HTTP_PORT"]
    report = f"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status != 200:
                    raise OSError(f"/healthz answered {answer.status}")
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
                refused = smtp.sendmail("ndr@contoso.com", [address], report)
            if refused:
                sys.exit(f"the ingest refused {refused}")
            return
        except (OSError, smtplib.SMTPException) as exc:
            if time.monotonic() > deadline:
                sys.exit(f"web or ingest not answering: {exc!r}")
            time.sleep(0.5)


def wait_archived_and_found(tenant_id: int, deadline: float) -> Any:
    """The tenant's one Delivery once it is archived, indexed and found by search."""
    from ingest.models import Delivery
    from search import Scope, get_backend

    while True:
        archived = Delivery.objects.filter(tenant_id=tenant_id, status="archived", message__index_status="indexed")
        deliveries = list(archived.select_related("tenant", "message"))
        hits = get_backend().search(Scope(tenant_id), "*")
        if len(deliveries) == 1 and hits.ids == [deliveries[0].message_id]:
            print(f"archived and found through the {get_backend().name} backend")
            return deliveries[0]
        if time.monotonic() > deadline:
            sys.exit(f"after {TIMEOUT:.0f} s: {len(deliveries)} archived and indexed, {hits.count} found; expected 1")
        time.sleep(0.5)


def check_in_s3(delivery: Any) -> None:
    """The report's bytes are an object in the tenant's bucket on the S3 endpoint."""
    import boto3
    from botocore.config import Config
    from django.conf import settings

    client = boto3.client(
        "s3",
        endpoint_url=settings.ARCHIVA_S3_ENDPOINT,
        region_name=settings.ARCHIVA_S3_REGION,
        config=Config(s3={"addressing_style": "path"}),
    )
    bucket = delivery.tenant.bucket
    sizes = {item["Key"]: item["Size"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    size = sizes.get(delivery.storage_key)
    if size is None:
        sys.exit(f"s3://{bucket}/{delivery.storage_key} is not in the bucket, which holds {sorted(sizes)}")
    if size < delivery.storage_offset + delivery.size:
        sys.exit(f"s3://{bucket}/{delivery.storage_key} has {size} bytes, short of the report's")
    print(f"stored in S3: s3://{bucket}/{delivery.storage_key} ({size} bytes)")


def check_in_elasticsearch(delivery: Any, subject: str) -> None:
    """The message's document is in the Elasticsearch index the backend names."""
    from search import get_backend

    backend = get_backend()
    if backend.name != "elasticsearch":
        sys.exit(f"ARCHIVA_SEARCH_URL is set but search went through the {backend.name} backend")
    query = {"query": {"term": {"tenant_id": delivery.tenant_id}}}
    request = urllib.request.Request(  # noqa: S310 - the configured loopback test server
        f"{os.environ['ARCHIVA_SEARCH_URL'].rstrip('/')}/{backend.alias}/_search",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        found = [hit["_source"] for hit in json.load(answer)["hits"]["hits"]]
    if [doc.get("subject") for doc in found] != [subject]:
        sys.exit(f"index {backend.alias} holds {found!r} for tenant {delivery.tenant_id}; expected one {subject!r}")
    print(f"indexed in Elasticsearch: {backend.alias}, tenant {delivery.tenant_id}")


def main() -> None:
    tenant_id, address, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    deadline = time.monotonic() + TIMEOUT
    send_report(address, subject, deadline)
    print("accepted over SMTP")
    import django

    django.setup()
    from django.conf import settings

    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # a line per poll otherwise

    delivery = wait_archived_and_found(tenant_id, deadline)
    if settings.ARCHIVA_STORAGE == "s3":
        check_in_s3(delivery)
    if settings.ARCHIVA_SEARCH_URL:
        check_in_elasticsearch(delivery, subject)


if __name__ == "__main__":
    main()
