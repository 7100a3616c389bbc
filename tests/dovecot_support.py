"""A real IMAP server for tests: Debian's Dovecot on loopback, XOAUTH2 checked by the Microsoft fake.

`Dovecot(fake).start()` writes a private configuration into a temporary
folder and runs `dovecot -F -c <file>` as an unprivileged user (the current
one, or `nobody` when the tests run as root): implicit TLS on a free port
with a certificate from the fake's CA (so the product trusts it through
ARCHIVA_MS_CA_BUNDLE, as it trusts the fake), maildirs under the folder,
and an oauth2 passdb whose introspection URL is the fake's
`/imap/introspect`: a token is accepted only if the fake issued it for
Exchange to an app granted the mailbox (`MicrosoftFake.grant_mailbox`).

The test fills a mailbox the way a delivery agent does (a file in the
maildir's `new/`) and reads what is left the same way.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ms_fake import MicrosoftFake
from tests.servers import free_port, missing, wait_for_port

DOVECOT = "/usr/sbin/dovecot"


class Dovecot:
    def __init__(self, fake: MicrosoftFake, *, idle: bool = True) -> None:
        self.fake = fake
        self.idle = idle  # False: the capabilities offered after login leave IDLE out (a server without it)
        self.folder = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam("nobody")
        else:
            account = pwd.getpwuid(os.geteuid())
        self.uid, self.gid = account.pw_uid, account.pw_gid
        self.user, self.group = account.pw_name, grp.getgrgid(account.pw_gid).gr_name

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> Dovecot:
        if not Path(DOVECOT).exists():
            missing("Dovecot", "apt-get install -y dovecot-imapd (.ci/run installs it)")
        for sub in ("run", "state", "mail"):
            (self.folder / sub).mkdir()
        cert = self.fake.ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(self.folder / "cert.pem"))
        cert.private_key_pem.write_to_path(str(self.folder / "key.pem"))
        shutil.copy(self.fake.ca_path, self.folder / "ca.pem")
        (self.folder / "oauth2.conf").write_text(self.oauth2_conf())
        (self.folder / "dovecot.conf").write_text(self.dovecot_conf())
        self.own(self.folder)
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.folder / "dovecot.conf")],
            stdout=(self.folder / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            **self.as_user(),
        )
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"Dovecot did not start:\n{self.log()}") from None
        return self

    def as_user(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "dovecot.log"):
            path = self.folder / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def own(self, path: Path) -> None:
        """Hand files to the server's user (when the tests run as root)."""
        if os.geteuid() != 0:
            return
        os.chmod(path, 0o755)
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                os.chown(name, self.uid, self.gid)

    # --- configuration -----------------------------------------------------------------

    def oauth2_conf(self) -> str:
        return (
            "introspection_mode = post\n"
            f"introspection_url = {self.fake.url}/imap/introspect\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"tls_ca_cert_file = {self.folder}/ca.pem\n"
        )

    def dovecot_conf(self) -> str:
        d = self.folder
        capabilities = (
            "" if self.idle else "  imap_capability = IMAP4rev1 SASL-IR LITERAL+ ENABLE UIDPLUS MOVE NAMESPACE\n"
        )
        return f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = {self.user}
default_internal_group = {self.group}
default_login_user = {self.user}
ssl = required
ssl_min_protocol = TLSv1.2
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
auth_mechanisms = xoauth2 oauthbearer
auth_verbose = yes
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={d}/mail/%Lu
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
{capabilities}}}
"""

    # --- mailboxes ---------------------------------------------------------------------

    def maildir(self, address: str, folder: str = "INBOX") -> Path:
        root = self.folder / "mail" / address.lower() / "Maildir"
        return root if folder.upper() == "INBOX" else root / f".{folder.replace('/', '.')}"

    def deliver(self, address: str, raw: bytes) -> None:
        """Put a message into the mailbox's INBOX as a local delivery agent does."""
        maildir = self.maildir(address)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.test"
        (maildir / "tmp" / name).write_bytes(raw)
        self.own(self.folder / "mail")
        os.rename(maildir / "tmp" / name, maildir / "new" / name)

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """The messages in a folder now, as stored (those flagged deleted but not expunged included)."""
        maildir = self.maildir(address, folder)
        while True:  # Dovecot renames (new/ to cur/, flags) and expunges files while we read: look again
            try:
                return [
                    path.read_bytes()
                    for sub in ("new", "cur")
                    if (maildir / sub).is_dir()
                    for path in sorted((maildir / sub).iterdir())
                ]
            except FileNotFoundError:
                time.sleep(0.01)

    def flag_deleted(self, address: str) -> None:
        """Flag the INBOX's new messages \\Deleted without expunging them (maildir's `T` flag), as a
        client that died between STORE +FLAGS (\\Deleted) and EXPUNGE leaves them."""
        maildir = self.maildir(address)
        for path in list((maildir / "new").iterdir()):
            os.rename(path, maildir / "cur" / f"{path.name}:2,T")

    def reset_uidvalidity(self, address: str) -> None:
        """Forget the mailbox's UIDs (as a restore or a rebuilt mailbox does): a new UIDVALIDITY, UIDs from 1."""
        maildir = self.maildir(address)
        for path in maildir.iterdir():
            # The UID list and the indexes go; `dovecot-uidvalidity*` stays, so the next UIDVALIDITY is a new one.
            if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
                path.unlink()
        for path in (maildir / "cur").iterdir() if (maildir / "cur").is_dir() else []:
            # Files keep their names' UID-less part; moving them back to new/ makes Dovecot list them afresh.
            os.rename(path, maildir / "new" / path.name.split(":")[0])

    def capabilities(self, address: str, journal) -> set[str]:
        """What the server offers once `address` signed in (with the product's own token and TLS)."""
        from imapjournal.client import signed_in

        with signed_in(journal) as client:
            return {c.decode() for c in client.capabilities()}


@pytest.fixture
def dovecot(ms_fake: MicrosoftFake) -> Iterator[Dovecot]:
    """A running Dovecot on loopback whose XOAUTH2 sign-ins the Microsoft fake checks."""
    server = Dovecot(ms_fake).start()
    try:
        yield server
    finally:
        server.stop()
