"""API tokens: `arc_` + 43 url-safe characters (256 bits from `secrets`).

Only the SHA-256 is stored.  A slow password hash would add nothing: the
token is random, not chosen by a person, so it cannot be guessed offline.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "arc_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.strip().encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(PREFIX) + 6]
