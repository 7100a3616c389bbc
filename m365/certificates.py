"""The app's credential: an RSA key and a self-signed X.509 certificate.

The admin uploads the public certificate (`.cer`) to the Azure app
registration; msal signs its client assertions with the private key, which
stays on the server, encrypted at rest (infra.secrets).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.db import transaction
from django.utils import timezone

from infra import secrets

from .models import Certificate, Connection

KEY_BITS = 2048
VALIDITY = dt.timedelta(days=730)  # two years, what Azure accepts and the guide asks for
# Issued a little in the past so that a clock behind ours at Microsoft accepts it at once.
BACKDATE = dt.timedelta(minutes=5)


class SubjectError(ValueError):
    """A subject field is unusable; the message names it."""


@dataclass(frozen=True)
class Subject:
    common_name: str
    org_unit: str = ""
    organization: str = ""
    locality: str = ""
    state: str = ""
    country: str = ""

    def checked(self) -> Subject:
        """The fields stripped and checked (X.509 limits), or SubjectError naming the field."""
        fields = {name: str(getattr(self, name)).strip() for name in self.__dataclass_fields__}
        if not fields["common_name"]:
            raise SubjectError("common name: required")
        limits = {"common_name": 64, "org_unit": 64, "organization": 64, "locality": 128, "state": 128}
        for name, limit in limits.items():
            if len(fields[name]) > limit:
                raise SubjectError(f"{name.replace('_', ' ')}: at most {limit} characters")
        country = fields["country"].upper()
        if country and (len(country) != 2 or not country.isascii() or not country.isalpha()):
            raise SubjectError("country: a two-letter ISO 3166 code, e.g. US")
        fields["country"] = country
        return Subject(**fields)

    def x509_name(self) -> x509.Name:
        parts = [
            (NameOID.COMMON_NAME, self.common_name),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, self.org_unit),
            (NameOID.ORGANIZATION_NAME, self.organization),
            (NameOID.LOCALITY_NAME, self.locality),
            (NameOID.STATE_OR_PROVINCE_NAME, self.state),
            (NameOID.COUNTRY_NAME, self.country),
        ]
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts if value])


def thumbprint_of(cert: x509.Certificate) -> str:
    """SHA-1 of the DER bytes, lower-case hex: Azure's thumbprint (and, base64url, the JWT x5t)."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest()


def build(subject: Subject, now: dt.datetime | None = None) -> tuple[x509.Certificate, bytes]:
    """A new key and its self-signed certificate; the key as unencrypted PKCS#8 PEM (to be encrypted by the caller)."""
    subject = subject.checked()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    start = (now or timezone.now()) - BACKDATE
    name = subject.x509_name()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert, key_pem


def create_certificate(connection: Connection, subject: Subject) -> Certificate:
    """A new certificate for the connection, its private key encrypted before it reaches the database."""
    checked = subject.checked()
    cert, key_pem = build(checked)
    with transaction.atomic():
        return Certificate.objects.create(
            connection=connection,
            common_name=checked.common_name,
            org_unit=checked.org_unit,
            organization=checked.organization,
            locality=checked.locality,
            state=checked.state,
            country=checked.country,
            thumbprint=thumbprint_of(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            private_key_encrypted=secrets.encrypt(key_pem),
        )


def der_bytes(certificate: Certificate) -> bytes:
    """The public certificate as DER: the `.cer` file Azure takes."""
    cert = x509.load_pem_x509_certificate(certificate.certificate_pem.encode("ascii"))
    return cert.public_bytes(serialization.Encoding.DER)


def pem_text(certificate: Certificate) -> str:
    """The public certificate as PEM (never the key)."""
    return certificate.certificate_pem


def private_key_pem(certificate: Certificate) -> str:
    """The decrypted private key, for msal's client assertion only: never show, log or return it."""
    return secrets.decrypt(certificate.private_key_encrypted).decode("ascii")


def current_certificate(connection: Connection, now: dt.datetime | None = None) -> Certificate | None:
    """The newest certificate of the connection that is valid now (rotation: the new one wins at once)."""
    moment = now or timezone.now()
    return (
        connection.certificates.filter(not_before__lte=moment, not_after__gt=moment)
        .order_by("-not_before", "-id")
        .first()
    )
