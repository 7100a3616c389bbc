"""GET /metrics: the pipeline's state from the database, behind a bearer token."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest.delivery import PROCESS_TASK
from ingest.models import Delivery
from ingest.stats import count_publish_failure, publish_failures
from tests.archive_support import archive, corpus, corpus_names, deliver, fail_verification, received_at
from tests.broker_support import RedisServer
from tests.smtp_support import (
    journal_address,
    send,
    tls_files,  # noqa: F401 (fixture)
)
from tests.test_ingest_process import ingest_process  # noqa: F401 (fixture: a real `manage.py smtpd`)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "infra" / "monitoring" / "grafana-dashboard.json"


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr("archive.tasks.schedule_indexing", lambda: None)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client, **headers) -> str:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def test_metrics_need_the_bearer_token_when_one_is_set(client, settings, db):
    settings.ARCHIVA_METRICS_TOKEN = "s3cret-metrics"
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"Authorization: Bearer" in response.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert "archiva_queue_depth" in scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-metrics")


def test_without_a_token_only_loopback_clients_are_answered(client, settings, db):
    settings.ARCHIVA_METRICS_TOKEN = None
    assert "archiva_queue_depth" in scrape(client)  # the test client is 127.0.0.1
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert b"ARCHIVA_METRICS_TOKEN" in response.content


def test_the_pipeline_figures_follow_the_deliveries(client, org, outsider):
    names = corpus_names()
    archived = archive(org.tenant, corpus(names[0]))
    unindexed = archive(org.tenant, corpus(names[1]), index=False)
    failed = fail_verification(deliver(org.tenant, corpus(names[2])))
    waiting = received_at(deliver(org.tenant, corpus(names[3])), timezone.now() - dt.timedelta(minutes=10))
    assert archived.status == unindexed.status == Delivery.Status.ARCHIVED

    values = samples(scrape(client))
    assert values[("archiva_deliveries", (("status", "archived"),))] == 2
    assert values[("archiva_deliveries", (("status", "failed"),))] == 1
    assert values[("archiva_deliveries", (("status", "stored"),))] == 1
    assert values[("archiva_queue_depth", ())] == 1
    # the one waiting arrived ten minutes ago (shifted), so the backlog is at least that old
    assert values[("archiva_backlog_age_seconds", ())] >= 600
    # `deliver` records without publishing, as after a broker failure
    assert values[("archiva_deliveries_unpublished", ())] == 1
    assert values[("archiva_index_pending_messages", ())] == 1
    assert values[("archiva_index_lag_seconds", ())] > 0
    last = values[("archiva_tenant_last_journal_report_timestamp_seconds", (("tenant", str(org.tenant.public_id)),))]
    newest = max(d.received_at for d in Delivery.objects.filter(pk__in=[archived.pk, unindexed.pk, failed.pk]))
    assert last == newest.timestamp() > waiting.received_at.timestamp()
    # the outsider's tenant never sent a journal report: no series for it
    assert not [
        key
        for key in values
        if key[0].startswith("archiva_tenant_last")
        and key != ("archiva_tenant_last_journal_report_timestamp_seconds", (("tenant", str(org.tenant.public_id)),))
    ]


def test_an_empty_pipeline_reports_zeros(client, db):
    values = samples(scrape(client))
    assert values[("archiva_queue_depth", ())] == 0
    assert values[("archiva_backlog_age_seconds", ())] == 0
    assert values[("archiva_index_lag_seconds", ())] == 0
    assert values[("archiva_storage_scrub_findings", (("problem", "missing"),))] == 0


def test_the_smtp_certificate_expiry_is_read_from_its_file(client, settings, db, tls_files, tmp_path):  # noqa: F811
    settings.ARCHIVA_TLS_CERT = str(tls_files.cert)
    expected = x509.load_pem_x509_certificate(tls_files.cert.read_bytes()).not_valid_after_utc.timestamp()
    values = samples(scrape(client))
    label = (("path", str(tls_files.cert)),)
    assert values[("archiva_smtp_tls_certificate_not_after_timestamp_seconds", label)] == expected
    assert values[("archiva_smtp_tls_certificate_readable", label)] == 1

    settings.ARCHIVA_TLS_CERT = str(tmp_path / "gone.pem")
    values = samples(scrape(client))
    assert values[("archiva_smtp_tls_certificate_readable", (("path", str(tmp_path / "gone.pem")),))] == 0


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exposed_names(text: str) -> set[str]:
    """Every series name the text exposes, also for families with no sample yet (no reply sent so far)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, [""])
    }


def test_every_dashboard_panel_queries_metrics_that_exist(client, settings, db, tls_files):  # noqa: F811
    import re

    import ingest.metrics  # noqa: F401 (the ingest's own collectors, on its metrics port)

    settings.ARCHIVA_TLS_CERT = str(tls_files.cert)
    names = exposed_names(scrape(client)) | exposed_names(generate_latest(REGISTRY).decode())
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard["panels"]
    assert len(panels) >= 8
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= {n for n in re.findall(r"\b(archiva_[a-z_]+)", target["expr"])}
    assert used, "the dashboard queries no Archiva metric"
    # a histogram's _bucket/_count/_sum and a counter's _total are exposed names too
    assert sorted(used - names) == []


def test_the_ingest_serves_its_certificate_expiry_on_its_metrics_port(ingest_process, tls_files):  # noqa: F811
    import urllib.request

    from tests.servers import free_port, wait_for_port

    port = free_port()
    ingest_process(ARCHIVA_METRICS_PORT=str(port), ARCHIVA_METRICS_HOST="127.0.0.1")
    wait_for_port(port, timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    expected = x509.load_pem_x509_certificate(tls_files.cert.read_bytes()).not_valid_after_utc.timestamp()
    label = (("path", str(tls_files.cert)),)
    values = samples(text)
    assert values[("archiva_smtp_tls_certificate_not_after_timestamp_seconds", label)] == expected
    assert values[("archiva_smtp_tls_certificate_readable", label)] == 1


def failures(client, task: str) -> float | None:
    """archiva_broker_publish_failures_total for `task` on /metrics; None when it has no series."""
    return samples(scrape(client)).get(("archiva_broker_publish_failures_total", (("task", task),)))


def test_failed_publishes_add_up_by_task(client, db):
    count_publish_failure(PROCESS_TASK)
    count_publish_failure(PROCESS_TASK)
    count_publish_failure("m365.tasks.process_notifications")
    assert publish_failures() == {PROCESS_TASK: 2, "m365.tasks.process_notifications": 1}
    assert failures(client, PROCESS_TASK) == 2
    assert failures(client, "m365.tasks.process_notifications") == 1


def test_a_count_that_fails_leaves_the_publishers_transaction_usable(org, caplog):
    """Counting never raises, and its failure (here: its table missing, as
    during a rolling upgrade before the migration) does not abort the
    transaction the publish was made from (PostgreSQL would refuse its next query)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE ingest_publishfailurecount RENAME TO publishfailurecount_away")  # rolled back
        count_publish_failure(PROCESS_TASK)
        org.tenant.refresh_from_db()
    assert f"could not count a failed publish of {PROCESS_TASK}" in caplog.text


def test_a_publish_to_a_stopped_broker_is_counted_on_metrics(ingest_process, tls_files, org, client, tmp_path):  # noqa: F811
    """The ingest (a process of its own) publishes to its Redis, which then
    stops: the 250 still goes out, and the web's /metrics counts the failed
    publish under the task's name."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        process = ingest_process(CELERY_BROKER_URL=redis.url)
        address = journal_address(org.tenant)
        code, reply = send(process, tls_files, [address], b"Subject: broker up\r\n\r\nx\r\n")
        assert code == 250
        published = Delivery.objects.filter(queue_id=reply.decode().split()[1])
        deadline = time.monotonic() + 30
        while not published.filter(enqueued_at__isnull=False).exists():
            assert time.monotonic() < deadline, (tmp_path / "smtpd.log").read_text()[-3000:]
            time.sleep(0.1)
        assert failures(client, PROCESS_TASK) is None  # published: nothing counted

        redis.stop()
        code, _ = send(process, tls_files, [address], b"Subject: broker gone\r\n\r\nx\r\n")
        assert code == 250
        deadline = time.monotonic() + 30
        while failures(client, PROCESS_TASK) is None:
            assert time.monotonic() < deadline, (tmp_path / "smtpd.log").read_text()[-3000:]
            time.sleep(0.2)
        assert failures(client, PROCESS_TASK) == 1
        assert "broker unavailable" in (tmp_path / "smtpd.log").read_text()
    finally:
        redis.stop()
