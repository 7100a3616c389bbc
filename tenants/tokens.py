"""Journal tokens: `<6-digit cell><57 base62 characters from secrets>`."""

from __future__ import annotations

import hashlib
import re
import secrets
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
CELL_DIGITS = 6
SECRET_LENGTH = 57
TOKEN_LENGTH = CELL_DIGITS + SECRET_LENGTH
TOKEN_RE = re.compile(r"\d{6}[0-9A-Za-z]{57}")
LOCAL_PART_RE = re.compile(r"journal-(\d{6}[0-9A-Za-z]{57})", re.IGNORECASE)


def new_token(cell: int = 0) -> str:
    if not 0 <= cell < 10**CELL_DIGITS:
        raise ValueError(f"cell {cell} out of range")
    secret = "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))
    return f"{cell:0{CELL_DIGITS}d}{secret}"


def parse_local_part(local_part: str) -> str | None:
    """The token of a journal local part, or None when the shape is wrong.

    The `journal-` prefix is case-insensitive (some MTAs fold case), the
    token itself is case-sensitive base62.
    """
    match = LOCAL_PART_RE.fullmatch(local_part)
    return match.group(1) if match else None


def journal_local_part(token: str) -> str:
    return f"journal-{token}"


def new_link_secret() -> str:
    """The secret of an invitation link: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What the database keeps of a link secret (SHA-256 hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_txt_token() -> str:
    """The random part of a domain's verification TXT record (≈190 bits)."""
    return "".join(secrets.choice(BASE62) for _ in range(32))
