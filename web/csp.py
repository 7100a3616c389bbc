"""Content-Security-Policy for every response.

The policy is `settings.ARCHIVA_CSP` (directive → sources) plus the sources
of `ARCHIVA_CSP_EXTRA` ("img-src https://cdn.example; report-uri /csp").
A view that needs another policy (e.g. a sandboxed iframe for a message
body) sets the header itself, or uses `csp_override`; the middleware never
replaces a policy a view has set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from infra.env import ConfigError

HEADER = "Content-Security-Policy"
DIRECTIVE_RE = re.compile(r"[a-z][a-z-]*")
# Characters that would end a directive or the header.
BAD_SOURCE_RE = re.compile(r"[;,\s]")

View = Callable[..., HttpResponseBase]


def parse_extra(value: str) -> dict[str, list[str]]:
    """`"img-src https://a; report-uri /r"` → {"img-src": ["https://a"], ...}."""
    extra: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if not words:
            continue
        name, sources = words[0].lower(), words[1:]
        if not DIRECTIVE_RE.fullmatch(name):
            raise ConfigError(f"ARCHIVA_CSP_EXTRA: {name!r} is not a directive name")
        extra.setdefault(name, []).extend(sources)
    return extra


def merge(base: Mapping[str, list[str]], extra: Mapping[str, list[str]]) -> dict[str, list[str]]:
    policy = {name: list(sources) for name, sources in base.items()}
    for name, sources in extra.items():
        current = policy.setdefault(name, [])
        current.extend(source for source in sources if source not in current)
    return policy


def render(policy: Mapping[str, list[str]]) -> str:
    for sources in policy.values():
        for source in sources:
            if BAD_SOURCE_RE.search(source):
                raise ValueError(f"invalid CSP source {source!r}")
    return "; ".join(" ".join([name, *sources]) for name, sources in policy.items())


def default_policy() -> dict[str, list[str]]:
    return merge(settings.ARCHIVA_CSP, parse_extra(settings.ARCHIVA_CSP_EXTRA))


def policy_with(**directives: list[str]) -> str:
    """The default policy with some directives replaced (`frame_src=[...]` → frame-src)."""
    policy = default_policy()
    for name, sources in directives.items():
        policy[name.replace("_", "-")] = list(sources)
    return render(policy)


def csp_override(**directives: list[str]) -> Callable[[View], View]:
    """View decorator: this view's responses get the default policy with `directives` replaced."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response = view(request, *args, **kwargs)
            response[HEADER] = policy_with(**directives)
            return response

        return wrapper

    return decorator


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        # Computed once: a malformed ARCHIVA_CSP_EXTRA stops the app at start.
        self.header = render(default_policy())

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if HEADER not in response:
            response[HEADER] = self.header
        return response
