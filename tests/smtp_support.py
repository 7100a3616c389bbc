"""Fixtures and helpers for talking SMTP to a real ingest over real sockets."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from ingest.server import IngestServer, policy_from_settings
from ingest.tls import server_context
from regions.current import current_region
from tenants.access import current_token
from tenants.models import Tenant

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_dir() -> Path:
    for candidate in (CORPUS, Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"):
        if candidate.is_dir():
            return candidate
    pytest.fail("../shared/corpus is missing: the sample journal reports are needed")


def journal_address(tenant: Tenant) -> str:
    return f"journal-{current_token(tenant).token}@{current_region().journal_domain}"


@dataclass
class TLSFiles:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", current_region().journal_domain)
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(cert_file, append=True)
    cert.private_key_pem.write_to_path(key_file)
    return TLSFiles(ca=ca, cert=cert_file, key=key_file)


def start_ingest(tls_files: TLSFiles, **policy_overrides) -> IngestServer:
    policy = policy_from_settings()
    for name, value in policy_overrides.pop("policy", {}).items():
        setattr(policy, name, value)
    server = IngestServer(
        "127.0.0.1",
        0,
        policy=policy,
        tls_context=server_context(tls_files.cert, tls_files.key),
        **policy_overrides,
    )
    server.directory.refresh_interval = 0.2
    return server.start_in_thread()


@pytest.fixture
def ingest(transactional_db, tls_files, org, outsider):
    """A running ingest (TLS required) that knows Contoso and Fabrikam."""
    server = start_ingest(tls_files)
    yield server
    server.stop_thread()


@pytest.fixture
def server_factory(transactional_db, tls_files, org, outsider):
    """Start ingests with these policy attributes (Contoso and Fabrikam known); all stopped after the test."""
    started = []

    def make(**policy):
        server = start_ingest(tls_files, policy=policy)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop_thread()


def connect(server: IngestServer, tls_files: TLSFiles, *, starttls: bool = True, timeout: float = 30) -> smtplib.SMTP:
    return greet(smtplib.SMTP("127.0.0.1", server.port, timeout=timeout), tls_files, starttls=starttls)


def greet(client: smtplib.SMTP, tls_files: TLSFiles, *, starttls: bool = True) -> smtplib.SMTP:
    """EHLO as Exchange Online does, then STARTTLS and EHLO again."""
    client.ehlo("outbound.protection.outlook.com")
    if starttls:
        client.starttls(context=tls_files.client_context())
        client.ehlo("outbound.protection.outlook.com")
    return client


def send(server: IngestServer, tls_files: TLSFiles, rcpts: list[str], data: bytes, sender: str = "ndr@contoso.com"):
    """Send one message over STARTTLS; returns (code, reply text) of the final reply."""
    with connect(server, tls_files) as client:
        return transact(client, rcpts, data, sender)


def transact(client: smtplib.SMTP, rcpts: list[str], data: bytes, sender: str = "ndr@contoso.com"):
    """MAIL, each RCPT (all must be 250), DATA; returns (code, reply text) of the final reply."""
    code, reply = client.mail(sender)
    assert code == 250, reply
    for rcpt in rcpts:
        code, reply = client.rcpt(rcpt)
        assert code == 250, (rcpt, reply)
    return client.data(data)


def stored_objects(folder: Path) -> list[Path]:
    """The ingest's objects under a folder of buckets (or one bucket): every
    message (`raw/`) and pack (`pack/`) placed, not the temporaries."""
    return [
        path
        for top in ("raw", "pack")
        for path in folder.rglob(f"{top}/*/*")
        if path.is_file() and not path.name.startswith(".tmp-")
    ]


def count_rejections(tenant: Tenant | None, reason: str, count: int, hour=None) -> None:
    """Refusals counted the way the ingest counts them (in memory, then flushed to the hour's row).

    `hour` moves them to an earlier hour: a time-shift (the counter takes no
    clock).  Shift the older ones first, as later counts of the same reason
    add to the current hour's row.
    """
    from django.utils import timezone

    from ingest.stats import RejectionCount, RejectionCounter

    counter = RejectionCounter()
    for _ in range(count):
        counter.add(tenant.pk if tenant else None, reason)
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    counter.flush()
    if hour is not None and hour < now:
        RejectionCount.objects.filter(tenant=tenant, reason=reason, hour__gte=now).update(hour=hour)
