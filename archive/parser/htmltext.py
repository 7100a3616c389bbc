"""HTML to searchable plain text.

selectolax (the Lexbor HTML5 parser, in C) rather than the standard library's
html.parser: the latter is quadratic on some inputs (a megabyte of `<` takes
seconds, unterminated comments minutes) and ~3x slower on ordinary mail.
Lexbor in turn is quadratic in nesting depth (20,000 nested `<div>`, 100 kB,
take seconds) and our per-block work is Python, so markup nested deeper than
any real mail, or larger than a big newsletter, goes through a linear regex
tag stripper instead.
"""

from __future__ import annotations

import html as htmllib
import re

from selectolax.lexbor import LexborHTMLParser

MAX_NESTING = 1500  # Lexbor's worst case at this depth is ~0.1 s
MAX_PARSED = 512 * 1024  # characters of HTML given to the parser
UNCHECKED_TAGS = 4000  # Lexbor's worst case at this many tags is ~0.05 s

_DROP = ["script", "style", "head", "title", "template", "noscript", "svg", "object", "iframe", "math"]
_BLOCK_NAMES = (
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form "
    "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr ul"
).split()
_BLOCKS = ",".join(_BLOCK_NAMES)
# Elements that never nest in a parsed tree (void, or closed implicitly by their next sibling).
_FLAT = set(
    "area base br col embed hr img input link meta param source track wbr p li dt dd option optgroup "
    "tr td th thead tbody tfoot colgroup rt rp".split()
)
_TAG = re.compile(r"<(/?[A-Za-z][A-Za-z0-9:-]{0,40})")
_ANY_TAG = re.compile(r"<[^<>]*>")


def _tag_pattern(names: list[str]) -> re.Pattern[str]:
    # Case-blind by character classes: a (?i) pattern loses the regex engine's literal-prefix scan.
    blind = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in name) for name in names)
    return re.compile("</?(?:" + "|".join(blind) + r")(?![A-Za-z0-9])[^<>]*>")


_BLOCK_TAG = _tag_pattern(_BLOCK_NAMES)
_CELL_TAG = _tag_pattern(["td", "th"])
_SPACES = re.compile(r"[ \t\r\f\v\xa0\u200b]+")
_LINE_EDGES = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n\n\n+")


def html_to_text(html: str, cap: int = 1_000_000) -> str:
    """Visible text of an HTML document: scripts, styles and the head dropped, blocks on their own lines."""
    if not html.strip():
        return ""
    small = len(html) <= MAX_PARSED and nesting(html) <= MAX_NESTING
    text = _parsed_text(html) if small else _stripped_text(html)
    text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))
    return _BLANK_LINES.sub("\n\n", text).strip()[:cap]


def nesting(html: str) -> int:
    """An upper bound on the element depth a parser would build (cheap: no tree).

    Up to UNCHECKED_TAGS tags the worst case is cheap enough to parse as it is.
    """
    if html.count("<") <= UNCHECKED_TAGS:
        return 0
    depth = deepest = 0
    for tag in _TAG.findall(html):
        if tag[0] == "/":
            if tag[1:].lower() not in _FLAT:
                depth = max(depth - 1, 0)
        elif tag.lower() not in _FLAT:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    break
    return deepest


def _parsed_text(html: str) -> str:
    tree = LexborHTMLParser(html)
    tree.strip_tags(_DROP)
    for node in tree.css(_BLOCKS):
        node.insert_before("\n")
        node.insert_after("\n")
    for node in tree.css("td,th"):
        node.insert_after("\t")
    root = tree.body or tree.root
    return root.text(deep=True, separator="") if root is not None else ""


def _stripped_text(html: str) -> str:
    """Tags out, entities decoded, comments, scripts and styles dropped; linear in the input."""
    html = _drop_between(html, "<!--", "-->", keep_closer=False)
    for name in ("head", "script", "style"):
        html = _drop_between(html, f"<{name}", f"</{name}")
    html = _CELL_TAG.sub(" ", _BLOCK_TAG.sub("\n", html))
    return htmllib.unescape(_ANY_TAG.sub("", html))


def _drop_between(html: str, opener: str, closer: str, keep_closer: bool = True) -> str:
    """Cut from each opener to its closer (a closing tag is left to the tag stripper); an unclosed one to the end."""
    lower = html.lower()
    if opener not in lower:
        return html
    pieces, pos = [], 0
    while (start := _find_token(lower, opener, pos)) >= 0:
        pieces.append(html[pos:start])
        end = _find_token(lower, closer, start + len(opener))
        if end < 0:
            return "".join(pieces)
        pos = end if keep_closer else end + len(closer)
    pieces.append(html[pos:])
    return "".join(pieces)


def _find_token(lower: str, token: str, start: int) -> int:
    """lower.find(token, start), but a tag name must end there: `<head` is not `<header`."""
    while (at := lower.find(token, start)) >= 0:
        after = lower[at + len(token) : at + len(token) + 1]
        if not (token[-1].isalnum() and after.isalnum()):
            return at
        start = at + 1
    return -1
