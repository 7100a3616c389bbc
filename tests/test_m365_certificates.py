"""The app certificate: a new RSA key and a self-signed certificate, the key encrypted at rest.

The private key never reaches the database in clear, never appears in a
repr, and decrypts only with a configured ARCHIVA_SECRETS_KEY; keys rotate
by putting a new one first.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.db import connection as db

from infra import secrets
from infra.env import ConfigError
from infra.secrets import SecretUnreadable, parse_secrets_keys
from m365.certificates import (
    Subject,
    SubjectError,
    create_certificate,
    current_certificate,
    der_bytes,
    private_key_pem,
    thumbprint_of,
)
from m365.models import Connection
from tests.test_settings import ROOT, clean_environ

SUBJECT = Subject(
    common_name="Archiva Contoso",
    org_unit="IT",
    organization="Contoso Ltd",
    locality="Redmond",
    state="WA",
    country="us",
)


@pytest.fixture
def connection(org) -> Connection:
    return Connection.objects.create(tenant=org.tenant)


def test_a_new_certificate_is_rsa_2048_self_signed_for_two_years_with_the_subject(connection):
    certificate = create_certificate(connection, SUBJECT)
    cert = x509.load_der_x509_certificate(der_bytes(certificate))
    name = {a.oid: a.value for a in cert.subject}

    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size >= 2048
    assert cert.issuer == cert.subject
    assert name[NameOID.COMMON_NAME] == "Archiva Contoso" and name[NameOID.COUNTRY_NAME] == "US"
    assert name[NameOID.ORGANIZATIONAL_UNIT_NAME] == "IT" and name[NameOID.LOCALITY_NAME] == "Redmond"
    assert name[NameOID.STATE_OR_PROVINCE_NAME] == "WA" and name[NameOID.ORGANIZATION_NAME] == "Contoso Ltd"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=729) < lifetime <= dt.timedelta(days=731)
    assert certificate.thumbprint == thumbprint_of(cert) and len(certificate.thumbprint) == 40
    assert certificate.not_after == cert.not_valid_after_utc


def test_the_private_key_is_stored_encrypted_and_never_in_a_repr(connection):
    certificate = create_certificate(connection, SUBJECT)
    key_pem = private_key_pem(certificate)
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    key_body = "".join(key_pem.splitlines()[1:-1])

    with db.cursor() as cursor:
        cursor.execute("SELECT * FROM m365_certificate WHERE id = %s", [certificate.id])
        row = " ".join(str(value) for value in cursor.fetchone())

    assert (
        key.public_key().public_numbers()
        == x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).public_key().public_numbers()
    )
    assert "PRIVATE KEY" not in row and key_body[:40] not in row
    assert "PRIVATE" not in repr(certificate) + str(certificate)
    assert certificate.private_key_encrypted not in repr(certificate)
    assert b"PRIVATE" not in der_bytes(certificate) and "PRIVATE" not in certificate.certificate_pem


@pytest.mark.parametrize(
    ("subject", "field"),
    [
        (Subject(common_name=" "), "common name"),
        (Subject(common_name="x", country="USA"), "country"),
        (Subject(common_name="x", country="1A"), "country"),
        (Subject(common_name="x" * 65), "common name"),
        (Subject(common_name="x", organization="o" * 65), "organization"),
    ],
)
def test_a_bad_subject_is_refused_naming_the_field(connection, subject, field):
    with pytest.raises(SubjectError, match=field):
        create_certificate(connection, subject)


def test_the_newest_certificate_valid_now_is_current(connection):
    old = create_certificate(connection, SUBJECT)
    new = create_certificate(connection, SUBJECT)
    assert current_certificate(connection) == new

    new.not_after = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    new.save()
    assert current_certificate(connection) == old


def test_secrets_rotate_with_a_new_key_first(settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ARCHIVA_SECRETS_KEYS = (old_key,)
    token = secrets.encrypt(b"the key")

    settings.ARCHIVA_SECRETS_KEYS = (new_key, old_key)
    assert secrets.decrypt(token) == b"the key"
    rotated = secrets.rotate(token)

    settings.ARCHIVA_SECRETS_KEYS = (new_key,)
    assert secrets.decrypt(rotated) == b"the key"
    with pytest.raises(SecretUnreadable, match="ARCHIVA_SECRETS_KEY"):
        secrets.decrypt(token)


def test_an_altered_secret_does_not_decrypt():
    token = secrets.encrypt(b"the key")
    altered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(SecretUnreadable):
        secrets.decrypt(altered)


def test_a_malformed_secrets_key_is_refused_naming_the_variable():
    with pytest.raises(ConfigError, match="ARCHIVA_SECRETS_KEY: key 2"):
        parse_secrets_keys("ARCHIVA_SECRETS_KEY", f"{Fernet.generate_key().decode()},short")
    with pytest.raises(ConfigError, match="ARCHIVA_SECRETS_KEY"):
        parse_secrets_keys("ARCHIVA_SECRETS_KEY", " , ")


PROBE = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps({"keys": list(settings.ARCHIVA_SECRETS_KEYS), "login": settings.ARCHIVA_MS_LOGIN_URL,
                  "graph": settings.ARCHIVA_MS_GRAPH_URL, "bundle": settings.ARCHIVA_MS_CA_BUNDLE}))
"""


def run_probe(data_dir, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=clean_environ(data_dir, **overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_embedded_default_generates_one_secrets_key_and_microsofts_hosts(tmp_path):
    import json

    first, second = run_probe(tmp_path), run_probe(tmp_path)
    assert first.returncode == 0, first.stderr
    loaded = json.loads(first.stdout.splitlines()[-1])

    assert loaded["keys"] == json.loads(second.stdout.splitlines()[-1])["keys"], "kept across restarts"
    assert (tmp_path / "secrets_key").stat().st_mode & 0o077 == 0
    assert loaded["login"] == "https://login.microsoftonline.com"
    assert loaded["graph"] == "https://graph.microsoft.com"
    assert loaded["bundle"] is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ARCHIVA_SECRETS_KEY", "not-a-fernet-key"),
        ("ARCHIVA_MS_LOGIN_URL", "http://login.example"),
        ("ARCHIVA_MS_GRAPH_URL", "graph.microsoft.com"),
        ("ARCHIVA_MS_CA_BUNDLE", "/nonexistent/ca.pem"),
        ("ARCHIVA_MS_TENANT_CONCURRENCY", "0"),
    ],
)
def test_a_bad_microsoft_setting_stops_the_process_naming_it(tmp_path, variable, value):
    result = run_probe(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and variable in result.stderr


def test_the_secrets_key_can_come_from_a_file(tmp_path):
    import json

    key = Fernet.generate_key().decode()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    result = run_probe(tmp_path, ARCHIVA_SECRETS_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["keys"] == [key]
    assert not (tmp_path / "secrets_key").exists()
