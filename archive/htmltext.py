"""HTML to searchable plain text with the standard library's tolerant parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = {"script", "style", "head", "title", "template", "noscript", "svg", "object", "iframe"}
_BLOCK = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tr", "ul",
}  # fmt: skip
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "wbr"}
_SPACES = re.compile(r"[ \t\r\f\v\xa0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


class _TextParser(HTMLParser):
    def __init__(self, cap: int) -> None:
        super().__init__(convert_charrefs=True)
        self.cap = cap
        self.size = 0
        self.pieces: list[str] = []
        self.skipping: list[str] = []  # open elements whose content is not text

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP and tag not in _VOID:
            self.skipping.append(tag)
        elif tag in _BLOCK:
            self._add("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK:
            self._add("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skipping:
            while self.skipping and self.skipping.pop() != tag:
                pass
        elif tag in _BLOCK:
            self._add("\n")
        elif tag in ("td", "th"):
            self._add("\t")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self._add(data)

    def _add(self, text: str) -> None:
        if self.size < self.cap:
            self.pieces.append(text)
            self.size += len(text)


def html_to_text(html: str, cap: int = 1_000_000) -> str:
    """Visible text of an HTML document: scripts, styles and the head dropped, blocks on lines."""
    parser = _TextParser(cap)
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):  # old html.parser versions assert on some junk
        pass
    text = "".join(parser.pieces)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()[:cap]
