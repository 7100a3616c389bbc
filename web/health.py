"""Probes for load balancers and orchestrators.

Both answer on any Host header: the kubelet and most load balancers probe
a pod's IP address, which is in no ALLOWED_HOSTS list, and over plain HTTP,
which SECURE_SSL_REDIRECT would answer with a redirect.  `ProbeMiddleware`
stands first in MIDDLEWARE and answers the two paths before any of that
runs; the URL patterns keep the same views for `reverse()` and for
deployments that put another middleware in front.

/healthz (liveness) depends on nothing: restarting a web pod because the
database is down would not bring the database back.  /readyz (readiness)
is 503 only when the database is unreachable, the one dependency without
which no page works; storage, search or the broker down is "degraded" with
200, so that an outage of search does not take every web pod out of its
Service (the pages that do not need search keep working).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers

from web import checks

# Without them the web cannot serve a single page: 503.
ESSENTIAL = ("database",)


def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: answers without touching the database or anything else."""
    return JsonResponse({"status": "ok", "checks": {"process": "ok"}})


def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: the database answers (503 if not); storage, broker and search down make it degraded."""
    results = checks.run_checks()
    failed = checks.failed(results)
    essential_failed = [name for name in failed if name in ESSENTIAL]
    status = "fail" if essential_failed else "degraded" if failed else "ok"
    body = {"status": status, "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if essential_failed else 200)


PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {"/healthz": healthz, "/readyz": readyz}


def _answer(request: HttpRequest, view: Callable[[HttpRequest], HttpResponse]) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response: HttpResponse = HttpResponse(
            "Only GET and HEAD.\n", status=405, content_type="text/plain; charset=utf-8"
        )
        response["Allow"] = "GET, HEAD"
    else:
        response = view(request)
        if request.method == "HEAD":
            response.content = b""
    add_never_cache_headers(response)
    return response


class ProbeMiddleware:
    """First in MIDDLEWARE: /healthz and /readyz before host validation, redirects and sessions."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = PROBES.get(request.path_info)
        if view is not None:
            return _answer(request, view)
        return self.get_response(request)


def healthz_view(request: HttpRequest) -> HttpResponse:
    return _answer(request, healthz)


def readyz_view(request: HttpRequest) -> HttpResponse:
    return _answer(request, readyz)
