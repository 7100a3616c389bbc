"""eDiscovery exports: the page (`/exports/`, started from search results),
the download, and `POST /api/v1/exports`, `GET /api/v1/exports/<id>`.

Every member may export what they can read (`compliance.exports` scopes the
search to them); an export is seen and downloaded by its creator or the
tenant's owners and admins, others get 404.  Creation and each download are
audited there.  The page has no script: a plain link refreshes the progress.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compliance import exports
from compliance.models_export import Export
from tenants.models import Membership, User
from web.api import ApiRequest, api_error, api_membership, api_view, api_write_view
from web.audit import client_ip
from web.roles import SignedInRequest, member_required


def download_url(export: Export) -> str | None:
    """The API's download (a session or the same Bearer token), once the file is ready."""
    return reverse("api-export-download", args=[export.public_id]) if exports.downloadable(export) else None


def export_json(export: Export) -> dict[str, Any]:
    """`GET /api/v1/exports/<id>` (its first keys are a contract: DESIGN.md)."""
    return {
        "id": str(export.public_id),
        "state": export.state,
        "done": export.done,
        "total": export.total,
        "manifest_sha256": export.manifest_sha256 or None,
        "download_url": download_url(export),
        "query": export.query,
        "selection": len(export.selection) if export.selection is not None else None,
        "format": export.format,
        "sha256": export.sha256 or None,
        "size": export.size,
        "created_at": export.created_at.isoformat(),
        "expires_at": export.expires_at.isoformat(),
        "error": export.error or None,
    }


@never_cache
@require_GET
@member_required
def exports_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    ctx = {"membership": membership, "exports": exports.exports_of(membership), "formats": Export.Format.choices}
    return render(request, "web/exports.html", ctx)


@require_POST
@member_required
def new_export(request: SignedInRequest, membership: Membership) -> HttpResponse:
    """The search page's "Export" button: the query and format as form fields."""
    try:
        exports.create_export(
            membership, request.POST.get("q", "").strip(), request.POST.get("format", ""), ip=client_ip(request)
        )
    except exports.ExportError as exc:
        ctx = {"membership": membership, "exports": exports.exports_of(membership), "error": str(exc)}
        return render(request, "web/exports.html", {**ctx, "formats": Export.Format.choices}, status=400)
    return redirect("exports")


@require_GET
@member_required
def download(request: SignedInRequest, membership: Membership, public_id: str) -> HttpResponseBase:
    export = exports.export_for(membership, public_id)
    return _download(request, membership, export)


def _download(request: HttpRequest, membership: Membership, export: Export) -> HttpResponseBase:
    if not exports.downloadable(export):
        return HttpResponse("This export is not ready, failed or has expired.", status=410, content_type="text/plain")
    exports.record_download(membership, export, ip=client_ip(request), token=getattr(request, "api_token", None))
    response = StreamingHttpResponse(exports.download_chunks(export), content_type="application/zip")
    response["Content-Length"] = str(export.size)
    response["Content-Disposition"] = content_disposition_header(True, f"export-{export.public_id}.zip")
    response["X-Archiva-Manifest-SHA256"] = export.manifest_sha256
    return response


@require_POST
@api_write_view
def api_exports(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = api_membership(request)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return api_error('the body must be JSON: {"q": …, "format": "eml-zip" or "mbox"}', 400)
    if not isinstance(body, dict):
        return api_error("the body must be a JSON object", 400)
    query, export_format = body.get("q", ""), body.get("format", Export.Format.EML_ZIP)
    if not isinstance(query, str) or not isinstance(export_format, str):
        return api_error("q and format must be strings", 400)
    try:
        selection = exports.checked_selection(body["ids"]) if "ids" in body else None
        export = exports.create_export(
            membership,
            query.strip(),
            export_format,
            selection=selection,
            ip=client_ip(request),
            token=getattr(request, "api_token", None),
        )
    except exports.ExportError as exc:
        return api_error(str(exc), 400)
    return JsonResponse({"id": str(export.public_id), "state": export.state}, status=201)


@require_http_methods(["GET"])
@api_view
def api_export(request: ApiRequest, user: User, public_id: str) -> HttpResponseBase:
    export = exports.export_for(api_membership(request), public_id)
    return JsonResponse(export_json(export))


@require_GET
@api_view
def api_export_download(request: ApiRequest, user: User, public_id: str) -> HttpResponseBase:
    membership = api_membership(request)
    return _download(request, membership, exports.export_for(membership, public_id))
