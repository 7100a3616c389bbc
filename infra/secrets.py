"""Secrets at rest (certificate private keys): encrypted with Fernet.

The keys come from `ARCHIVA_SECRETS_KEY` (or `_FILE`): one or more Fernet
keys separated by commas.  The first encrypts; every one decrypts, so a key
is rotated by putting a new one first, re-encrypting (`rotate`) and then
dropping the old one.  A Fernet token carries its own timestamp and HMAC, so
a value altered in the database fails to decrypt instead of decrypting to
garbage.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from infra.env import ConfigError


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


def parse_secrets_keys(name: str, value: str) -> tuple[str, ...]:
    """The Fernet keys of a setting, each checked (32 bytes of url-safe base64)."""
    keys = tuple(part.strip() for part in value.split(",") if part.strip())
    if not keys:
        raise ConfigError(f"{name} holds no key")
    for position, key in enumerate(keys, start=1):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{name}: key {position} is not a Fernet key (32 bytes of url-safe base64; make one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            )
    return keys


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode("ascii")) for key in keys])


def _configured() -> MultiFernet:
    from django.conf import settings

    return _fernet(tuple(settings.ARCHIVA_SECRETS_KEYS))


def encrypt(plain: bytes) -> str:
    """The secret encrypted with the first configured key, as ASCII text for a database column."""
    return _configured().encrypt(plain).decode("ascii")


def decrypt(token: str) -> bytes:
    """The secret back; SecretUnreadable when no configured key opens it (or it was altered)."""
    try:
        return _configured().decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise SecretUnreadable(
            "a stored secret cannot be decrypted: ARCHIVA_SECRETS_KEY lacks the key it was encrypted with"
        ) from None


def rotate(token: str) -> str:
    """The secret re-encrypted with the first configured key (after a key was added in front)."""
    try:
        return _configured().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeEncodeError):
        raise SecretUnreadable("a stored secret cannot be re-encrypted: no configured key opens it") from None
