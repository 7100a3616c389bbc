"""The ingest's TLS context: TLS 1.2 or newer, configured or self-signed.

`ReloadingContext` follows the certificate files: a renewed certificate
(cert-manager, certbot, a mounted Kubernetes Secret, which is swapped by
a symlink) is used by the next STARTTLS without restarting the ingest.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


# What tells a file changed: a replaced file (rename, a Secret's symlink swap)
# has another inode, an edited one another mtime or size.
Stamp = tuple[tuple[int, int, int, int], ...]


def _stamp(*paths: Path) -> Stamp:
    stamps = []
    for path in paths:
        st = os.stat(path)  # follows symlinks: a Secret volume swaps ..data
        stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class ReloadingContext:
    """The server context of a certificate and key, rebuilt when either file changes.

    `current()` is called before each STARTTLS handshake; it looks at the
    files at most every `check_interval` seconds (two stat calls), so a
    busy ingest does not stat them for every session.  A new file that does
    not load (half-written, a key that does not match the certificate while
    a renewal writes them one after the other) keeps the previous context
    and is logged; it is tried again when the files change again.
    """

    def __init__(self, cert_file: str | Path, key_file: str | Path, *, check_interval: float = 1.0):
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.check_interval = check_interval
        self._stamp = _stamp(self.cert_file, self.key_file)
        self._context = server_context(self.cert_file, self.key_file)  # the first must load: fail loudly
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            with self._lock:
                if now - self._checked >= self.check_interval:
                    self._checked = now
                    self._reload_if_changed()
        return self._context

    def _reload_if_changed(self) -> None:
        try:
            stamp = _stamp(self.cert_file, self.key_file)
        except OSError as exc:
            log.warning("TLS certificate files cannot be read (%s); keeping the loaded certificate", exc)
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            context = server_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning(
                "the changed TLS certificate %s / key %s does not load (%s); keeping the loaded certificate",
                self.cert_file,
                self.key_file,
                exc,
            )
            return
        self._context = context
        self.reloads += 1
        log.info("TLS certificate %s reloaded", self.cert_file)


def ensure_self_signed(folder: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for development, made once and kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_file, key_file = folder / "smtpd.crt", folder / "smtpd.key"
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file
