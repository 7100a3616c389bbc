"""Showing archived HTML safely: nh3 (ammonia) with remote content blocked.

The sanitized body goes into a sandboxed `<iframe srcdoc>` (no scripts, no
same-origin), and the page carries a CSP that allows no remote loads, so a
tracking pixel or a hostile stylesheet reaches nobody even if something
slipped through.  Remote images lose their `src` and keep their alt text.
"""

from __future__ import annotations

from dataclasses import dataclass

import nh3

# Attributes that make a browser fetch something on its own.
LOADING_ATTRIBUTES = {"src", "srcset", "background", "poster", "lowsrc", "dynsrc"}
TAGS = nh3.ALLOWED_TAGS | {"font"}
ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "font": {"color", "face", "size"},
    "td": {"align", "valign", "colspan", "rowspan", "width"},
    "th": {"align", "valign", "colspan", "rowspan", "width", "scope"},
    "table": {"align", "width", "border", "cellpadding", "cellspacing", "summary"},
}


@dataclass
class SafeHtml:
    html: str
    blocked: int  # remote resources removed


def sanitize(html: str) -> SafeHtml:
    blocked = 0

    def keep(tag: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if attribute in LOADING_ATTRIBUTES:
            if tag == "img" and attribute == "src" and value.lower().startswith("data:image/"):
                return value  # inline, nothing fetched
            blocked += 1
            return None
        if attribute == "href" and value.lower().startswith("data:"):
            return None
        return value

    cleaned = nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        attribute_filter=keep,
        url_schemes={"http", "https", "mailto", "data"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
    return SafeHtml(html=cleaned, blocked=blocked)


def frame_document(body: str) -> str:
    """The sandboxed frame's document; its CSP repeats the page's, for browsers without inheritance."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:">'
        "</head><body>" + body + "</body></html>"
    )
