"""The SMTP certificate is reloaded when its files change, without restarting the ingest."""

from __future__ import annotations

import logging
import os
import shutil
import smtplib
import subprocess

import pytest
import trustme
from cryptography import x509

from ingest.server import IngestServer, policy_from_settings
from ingest.tls import ReloadingContext
from regions.current import current_region
from tests.smtp_support import TLSFiles, journal_address

MESSAGE = b"From: a@contoso.com\r\nTo: b@fabrikam.com\r\nSubject: renewed\r\n\r\nhello\r\n"


def issue(ca: trustme.CA) -> tuple[bytes, bytes]:
    """A new certificate (and key) for the ingest's names, as PEM."""
    cert = ca.issue_cert("localhost", "127.0.0.1", current_region().journal_domain)
    return b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes()


def install(files: TLSFiles, pem: tuple[bytes, bytes]) -> None:
    """Replace both files as a renewal tool does: write aside, rename over (new inodes)."""
    for path, body in ((files.cert, pem[0]), (files.key, pem[1])):
        aside = path.with_name(path.name + ".new")
        aside.write_bytes(body)
        os.replace(aside, path)


def serial_seen(server: IngestServer, files: TLSFiles) -> int:
    """The serial number of the certificate a real client sees after STARTTLS."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("outbound.protection.outlook.com")
        client.starttls(context=files.client_context())
        der = client.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(pem: tuple[bytes, bytes]) -> int:
    return x509.load_pem_x509_certificate(pem[0]).serial_number


@pytest.fixture
def renewable(tmp_path):
    """A CA, a first certificate installed in tmp_path, and the files' paths."""
    ca = trustme.CA()
    files = TLSFiles(ca=ca, cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    first = issue(ca)
    files.cert.write_bytes(first[0])
    files.key.write_bytes(first[1])
    return files, first


@pytest.fixture
def reloading_ingest(transactional_db, org, outsider, renewable):
    files, first = renewable
    server = IngestServer(
        "127.0.0.1",
        0,
        policy=policy_from_settings(),
        tls_context=ReloadingContext(files.cert, files.key, check_interval=0.05),
    )
    server.directory.refresh_interval = 0.2
    server.start_in_thread()
    yield server, files, first
    server.stop_thread()


def until_serial(server, files, wanted: int) -> int:
    seen = 0
    for _ in range(100):  # the files are looked at every 0.05 s
        seen = serial_seen(server, files)
        if seen == wanted:
            break
    return seen


def test_a_renewed_certificate_is_what_the_next_starttls_sees_and_mail_still_flows(reloading_ingest, org):
    server, files, first = reloading_ingest
    assert serial_seen(server, files) == serial_of(first)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as before:  # a session on the old certificate
        before.ehlo("outbound.protection.outlook.com")
        before.starttls(context=files.client_context())
        before.ehlo("outbound.protection.outlook.com")
        second = issue(files.ca)
        install(files, second)
        assert until_serial(server, files, serial_of(second)) == serial_of(second)
        before.mail("ndr@contoso.com")
        before.rcpt(journal_address(org.tenant))
        code, _ = before.data(MESSAGE)
        assert code == 250  # the session that started on the old certificate finishes
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as after:
        after.ehlo("outbound.protection.outlook.com")
        after.starttls(context=files.client_context())
        after.ehlo("outbound.protection.outlook.com")
        after.mail("ndr@contoso.com")
        after.rcpt(journal_address(org.tenant))
        code, _ = after.data(MESSAGE)
        assert code == 250


def test_openssl_s_client_sees_the_renewed_certificate(reloading_ingest):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed: apt-get install openssl")
    server, files, _ = reloading_ingest
    second = issue(files.ca)
    install(files, second)
    until_serial(server, files, serial_of(second))
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-starttls",
            "smtp",
            "-servername",
            "localhost",
        ],
        input=b"QUIT\r\n",
        capture_output=True,
        timeout=30,
    )
    pem = done.stdout[done.stdout.index(b"-----BEGIN CERTIFICATE-----") :]
    pem = pem[: pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")]
    assert x509.load_pem_x509_certificate(pem).serial_number == serial_of(second)


def test_a_broken_new_certificate_keeps_the_old_one_and_is_logged(reloading_ingest, caplog):
    server, files, first = reloading_ingest
    caplog.set_level(logging.WARNING, logger="ingest.tls")
    files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    for _ in range(20):
        assert serial_seen(server, files) == serial_of(first)  # still served, handshakes succeed
    assert "does not load" in caplog.text
    assert "keeping the loaded certificate" in caplog.text
    second = issue(files.ca)
    install(files, second)  # fixed: the next change is tried again
    assert until_serial(server, files, serial_of(second)) == serial_of(second)


def test_a_key_that_does_not_match_yet_keeps_the_old_pair_until_the_key_arrives(renewable, caplog):
    """Renewal tools write the certificate, then the key: in between, the pair does not match."""
    files, first = renewable
    caplog.set_level(logging.WARNING, logger="ingest.tls")
    context = ReloadingContext(files.cert, files.key, check_interval=0)
    original = context.current()
    second = issue(files.ca)
    files.cert.write_bytes(second[0] + b"\n")  # the certificate only
    assert context.current() is original
    assert "does not load" in caplog.text
    files.key.write_bytes(second[1])
    assert context.current() is not original
    assert context.reloads == 1


def test_a_kubernetes_secret_swap_through_a_symlink_is_followed(tmp_path):
    """A mounted Secret changes by swapping the ..data symlink: same path, another inode behind it."""
    ca = trustme.CA()
    for version in ("v1", "v2"):
        folder = tmp_path / version
        folder.mkdir()
        cert, key = issue(ca)
        (folder / "tls.crt").write_bytes(cert)
        (folder / "tls.key").write_bytes(key)
    (tmp_path / "..data").symlink_to("v1")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    context = ReloadingContext(tmp_path / "tls.crt", tmp_path / "tls.key", check_interval=0)
    original = context.current()
    assert context.current() is original  # nothing changed: the same context
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert context.current() is not original
    assert context.reloads == 1


def test_a_certificate_that_does_not_load_at_start_is_a_clear_error(tmp_path):
    (tmp_path / "cert.pem").write_text("nothing")
    (tmp_path / "key.pem").write_text("nothing")
    with pytest.raises(Exception, match="PEM|SSL|No such"):
        ReloadingContext(tmp_path / "cert.pem", tmp_path / "key.pem")
