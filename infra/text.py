"""Text that every database and search backend accepts.

Mail is whatever a sender wrote: a NUL byte in a subject, an address or an
attachment's text is legal enough to arrive, and PostgreSQL refuses it in
text and jsonb columns ("PostgreSQL text fields cannot contain NUL"), which
failed a whole batch of other tenants' messages.  Lone surrogates (from
undecodable header bytes) cannot be encoded as UTF-8 at all.  What we store
or index as text goes through here; the raw bytes stay as received in the
bucket.
"""

from __future__ import annotations

from typing import Any


def storable_text(text: str) -> str:
    """`text` without NUL characters, and with any lone surrogate replaced (U+FFFD)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def storable(value: Any) -> Any:
    """`value` with every string in it (in lists, tuples and dicts too) made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, tuple):
        return tuple(storable(item) for item in value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value
