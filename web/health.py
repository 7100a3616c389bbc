"""Probes for load balancers and orchestrators."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from web import checks


@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: answers without touching the database or anything else."""
    return HttpResponse("ok", content_type="text/plain")


@never_cache
@require_safe
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: database, storage, broker and search (when configured) answer."""
    results = checks.run_checks()
    failed = checks.failed(results)
    body = {"status": "fail" if failed else "ok", "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if failed else 200)
