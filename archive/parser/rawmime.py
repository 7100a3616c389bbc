"""Byte-level MIME helpers that never raise on hostile input.

The journal wrapper is sliced here by hand rather than through the `email`
package: a `message/rfc822` part sent with `Content-Transfer-Encoding: binary`
must come out byte for byte (piler and Python's generator both alter it), and
the SHA-256 of those bytes is the dedupe key.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import quopri
import re
from email.message import Message

# Charset labels mail software sends that Python does not know, or knows under
# another name; the values are supersets where the label is a subset.
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "x-mac-roman": "mac-roman",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "us-ascii": "utf-8",  # mislabelled 8-bit text is usually UTF-8; ASCII is a subset
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "iso-8859-1": "cp1252",  # what senders label Latin-1 almost always is
    "latin1": "cp1252",
    "latin-1": "cp1252",
}

MAX_HEADER_BLOCK = 1 << 20  # a header block larger than 1 MiB is not headers
MAX_HEADER_VALUE = 64 * 1024  # per header, after unfolding

_ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
_BLANK_BETWEEN_WORDS = re.compile(rb"(\?=)[ \t\r\n]+(?==\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*\?=)")


def to_bytes(text: str) -> bytes:
    """Undo the `email` package's surrogateescape decoding: the input bytes exactly."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that did not come from input bytes
        return text.encode("utf-8", "replace")


def codec_for(charset: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None when unknown or not text."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower().split("*", 1)[0]  # RFC 2231 language suffix
    label = _CHARSET_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in ("idna", "punycode"):
        return None
    return info.name


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Bytes to text: the declared charset, else UTF-8, else cp1252; never raises."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace")
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return data.decode("utf-16", "replace")
    codec = codec_for(charset)
    if codec and codec != "utf-8":
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, LookupError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared_utf8 = (charset or "").strip().strip("\"'").lower() in ("utf-8", "utf8")
    return data.decode("utf-8" if declared_utf8 else "cp1252", "replace")


def decode_header_value(raw: bytes | str) -> str:
    """An unfolded header value with RFC 2047 words and raw 8-bit text decoded."""
    if isinstance(raw, str):
        raw = to_bytes(raw)
    raw = unfold(raw[:MAX_HEADER_VALUE])
    if b"=?" not in raw:
        return decode_text(raw).strip()
    raw = _BLANK_BETWEEN_WORDS.sub(rb"\1", raw)
    out: list[str] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(raw):
        out.append(decode_text(raw[pos : match.start()]))
        out.append(_decode_word(match.group(1), match.group(2), match.group(3)))
        pos = match.end()
    out.append(decode_text(raw[pos:]))
    return "".join(out).strip()


def _decode_word(charset: bytes, encoding: bytes, text: bytes) -> str:
    if encoding in b"bB":
        text = text.rstrip(b"=")
        if len(text) % 4 == 1:
            text = text[:-1]
        try:
            data = base64.b64decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            data = b""
    else:
        data = quopri.decodestring(text.replace(b"_", b" "), header=True)
    return decode_text(data, charset.decode("ascii", "replace"))


def unfold(value: bytes) -> bytes:
    """RFC 5322 unfolding: drop the line breaks inside a header value."""
    if b"\n" not in value and b"\r" not in value:
        return value
    return re.sub(rb"\r?\n(?=[ \t])|\r?\n$", b"", value).replace(b"\r", b"").replace(b"\n", b" ")


def split_head_body(raw: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line; a message without one is all headers."""
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    if raw.startswith(b"\n"):
        return b"", raw[1:]
    crlf = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK)
    # A bare "\n\n" counts only before it (scanning a CRLF message's whole body for one was most of this).
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else MAX_HEADER_BLOCK)
    if lf >= 0:
        return raw[:lf], raw[lf + 2 :]
    if crlf >= 0:
        return raw[:crlf], raw[crlf + 4 :]
    return raw, b""


def parse_headers(head: bytes) -> list[tuple[str, bytes]]:
    """Header fields as (lower-cased name, raw unfolded value) in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n", head[:MAX_HEADER_BLOCK]):
        if line[:1] in (b" ", b"\t") and fields:
            last, value = fields[-1]
            if len(value) < MAX_HEADER_VALUE:
                fields[-1] = (last, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if colon and name and b" " not in name.strip():
            fields.append((name.strip().decode("ascii", "replace").lower(), value.strip()))
    return fields


def header(fields: list[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in fields:
        if key == name:
            return value
    return None


def content_type(value: bytes | None) -> tuple[str, dict[str, str]]:
    """('type/subtype', params) with RFC 2231 parameters decoded; text/plain when absent or broken."""
    if value is not None and len(value) <= _CACHED_CONTENT_TYPE:
        ctype, params = _content_type_cached(value)
        return ctype, dict(params)  # the caller's own copy
    return _content_type(value)


# Short values repeat from report to report (a journal report's envelope and
# message parts), and the email package's parameter parsing is slow.
_CACHED_CONTENT_TYPE = 256


@functools.lru_cache(maxsize=1024)
def _content_type_cached(value: bytes) -> tuple[str, dict[str, str]]:
    return _content_type(value)


def _content_type(value: bytes | None) -> tuple[str, dict[str, str]]:
    msg = Message()
    if value:
        msg["Content-Type"] = value.decode("utf-8", "replace")
    params: dict[str, str] = {}
    for key in ("boundary", "charset", "name"):
        try:
            param = msg.get_param(key)
        except Exception:  # noqa: BLE001 - the stdlib's RFC 2231 code has corner cases
            param = None
        if param is not None:
            params[key] = _param_text(param)
    try:
        ctype = msg.get_content_type()
    except Exception:  # noqa: BLE001
        ctype = "text/plain"
    return ctype, params


def _param_text(param: str | tuple[str | None, str | None, str]) -> str:
    if isinstance(param, tuple):  # RFC 2231: (charset, language, value)
        charset, _lang, value = param
        data = value.encode("latin-1", "replace") if isinstance(value, str) else bytes(value)
        return decode_text(data, charset)
    return param


def split_multipart(body: bytes, boundary: str) -> tuple[list[bytes], bool]:
    """The raw parts between delimiter lines, and whether the close delimiter was seen.

    The line break before a delimiter belongs to the delimiter (RFC 2046 5.1.1),
    so a part's bytes end where its content ends.  A truncated message keeps its
    last part up to the end of input.
    """
    marker = b"--" + boundary.encode("utf-8", "replace")
    delimiters: list[tuple[int, int, bool]] = []  # (line start, end of line, is the close delimiter)
    pos = 0
    while True:
        pos = body.find(marker, pos)
        if pos < 0:
            break
        if pos == 0 or body[pos - 1 : pos] == b"\n":
            line_end = body.find(b"\n", pos)
            line_end = len(body) if line_end < 0 else line_end + 1
            rest = body[pos + len(marker) : line_end]
            is_close = rest.startswith(b"--")
            if is_close or not rest.strip(b" \t\r\n"):
                delimiters.append((pos, line_end, is_close))
                if is_close:
                    break
        pos += len(marker)
    parts: list[bytes] = []
    for index, (_start, line_end, is_close) in enumerate(delimiters):
        if is_close:
            break
        following = delimiters[index + 1][0] if index + 1 < len(delimiters) else None
        parts.append(body[line_end : len(body) if following is None else _content_end(body, following)])
    return parts, bool(delimiters) and delimiters[-1][2]


def _content_end(body: bytes, delimiter_start: int) -> int:
    if body[delimiter_start - 2 : delimiter_start] == b"\r\n":
        return delimiter_start - 2
    if body[delimiter_start - 1 : delimiter_start] == b"\n":
        return delimiter_start - 1
    return delimiter_start


def decode_transfer(data: bytes, cte: bytes | None) -> bytes:
    """Undo a Content-Transfer-Encoding; identity and unknown encodings pass through as they are."""
    name = (cte or b"").strip().lower()
    if name == b"base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        if len(cleaned) % 4 == 1:  # a lone trailing sextet carries no whole byte
            cleaned = cleaned[:-1]
        try:
            return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            return b""
    if name == b"quoted-printable":
        return quopri.decodestring(data)
    return data


_BOUNDARY_VALUE = re.compile(rb'\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')


def multipart_depth(raw: bytes, trusted_below: int = 20, stop_above: int = 64) -> int:
    """An upper bound on how deeply multiparts nest, without parsing.

    The `email` package checks every line against every enclosing boundary,
    so its time grows with depth times lines: a crafted message can stall a
    worker for minutes.  Few boundary parameters mean a shallow tree; more get
    a scan that follows delimiters the way the parser does.
    """
    declared = raw.count(b"oundary") + raw.count(b"OUNDARY")
    if declared < trusted_below:
        return declared
    stack: list[bytes] = []
    deepest = 0
    for _pos, is_param, value in sorted(_boundary_params(raw) + _delimiter_lines(raw)):
        if is_param:
            stack.append(value)
            deepest = max(deepest, len(stack))
            if deepest > stop_above:  # deep enough to refuse; and keeps `in stack` cheap
                return deepest
        elif value in stack:  # "--X": parts nested inside X's previous part are over
            del stack[stack.index(value) + 1 :]
        elif value.endswith(b"--") and value[:-2] in stack:  # "--X--": X is over
            del stack[stack.index(value[:-2]) :]
    return deepest


def _boundary_params(raw: bytes) -> list[tuple[int, bool, bytes]]:
    found = []
    for word in (b"oundary", b"OUNDARY"):  # substring search is fast; a case-blind regex is not
        pos = raw.find(word)
        while pos > 0:
            if raw[pos - 1 : pos] in b"bB":
                match = _BOUNDARY_VALUE.match(raw, pos + len(word))
                if match:
                    found.append((pos, True, match.group(1) or match.group(2)))
            pos = raw.find(word, pos + 1)
    return found


def _delimiter_lines(raw: bytes) -> list[tuple[int, bool, bytes]]:
    found = []
    pos = raw.find(b"\n--")
    while pos >= 0:
        end = raw.find(b"\n", pos + 1)
        end = len(raw) if end < 0 else end
        found.append((pos, False, raw[pos + 3 : min(end, pos + 206)].rstrip(b" \t\r")))
        pos = raw.find(b"\n--", pos + 1)
    return found


def loose_text(body: bytes, max_chars: int) -> str:
    """The text of a MIME body whose structure could not be taken apart, up to
    `max_chars`: its lines without delimiter lines, part headers and
    base64-encoded content (which would be noise), read from its start only."""
    kept: list[str] = []
    in_headers = skipping = False
    for line in decode_text(body[: max_chars * 4]).splitlines():
        if line.startswith("--"):  # a delimiter: part headers follow
            in_headers, skipping = True, False
        elif in_headers:
            if not line.strip():
                in_headers = False
            elif line.lower().startswith("content-transfer-encoding:") and "base64" in line.lower():
                skipping = True
        elif not skipping:
            kept.append(line)
    return "\n".join(kept).strip()[:max_chars]
