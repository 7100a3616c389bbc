"""Import of uploaded mail: the page (`/import/`) and `POST /api/v1/imports`,
`GET /api/v1/imports/<id>`.  Owners and admins only (an import adds to the
archive); others 403, another tenant's import 404.

Uploads stream to a temporary file on disk beyond FILE_UPLOAD_MAX_MEMORY_SIZE
(Django's upload handlers, into FILE_UPLOAD_TEMP_DIR), so a file of several
GB never sits in memory; `compliance.imports` takes it from there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, TemporaryFileUploadHandler
from django.http import HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from compliance import imports
from compliance.models_export import Import
from tenants.models import Membership, User
from web.api import ApiRequest, api_error, api_membership, api_view, api_write_view
from web.audit import client_ip
from web.roles import SignedInRequest, admin_required


class SpooledUpload(TemporaryUploadedFile):
    """Django's temporary upload file, in the spool's uploads/ (on the import
    spool's filesystem, and made on first use: the spool may be a fresh volume)."""

    def __init__(
        self, name: str, content_type: str, size: int, charset: str | None, extra: dict[str, bytes] | None = None
    ) -> None:
        folder = Path(settings.ARCHIVA_SPOOL_DIR) / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        file = tempfile.NamedTemporaryFile(suffix=".upload", dir=folder)  # noqa: SIM115 - the upload owns it
        UploadedFile.__init__(self, file, name, content_type, size, charset, extra)


class SpoolUploadHandler(TemporaryFileUploadHandler):
    """Django's handler for large uploads, writing into `SpooledUpload`."""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        FileUploadHandler.new_file(self, *args, **kwargs)
        self.file = SpooledUpload(
            self.file_name or "upload", self.content_type or "", 0, self.charset, self.content_type_extra
        )


def import_json(found: Import) -> dict[str, Any]:
    return {
        "id": str(found.public_id),
        "state": found.state,
        "file": found.file_name,
        "format": found.format,
        "size": found.size,
        "position": found.position,
        "extent": found.extent,
        "percent": percent(found),
        "done": found.done,
        "stored": found.stored,
        "already_archived": found.already_archived,
        "error_count": found.error_count,
        "errors": found.errors,
        "error": found.error or None,
        "created_at": found.created_at.isoformat(),
        "finished_at": found.finished_at.isoformat() if found.finished_at else None,
    }


def percent(found: Import) -> int:
    if found.state == Import.State.DONE:
        return 100
    return min(100, found.position * 100 // found.extent) if found.extent else 0


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def import_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    error, status = None, 200
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            error, status = "Choose a file to upload: an mbox, a ZIP of .eml files or an Outlook .pst.", 400
        else:
            try:
                imports.start_import(membership, upload, ip=client_ip(request))
            except imports.UploadRefused as exc:
                error, status = str(exc), exc.status
            else:
                return redirect("import")
    found = [(i, percent(i)) for i in imports.imports_of(membership)]
    return render(
        request, "web/import.html", {"membership": membership, "imports": found, "error": error}, status=status
    )


@require_http_methods(["POST"])
@api_write_view
def api_imports(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = api_membership(request)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    upload = request.FILES.get("file")
    if upload is None:
        return api_error('send the file as multipart/form-data, field "file"', 400)
    try:
        started = imports.start_import(
            membership, upload, ip=client_ip(request), token=getattr(request, "api_token", None)
        )
    except imports.UploadRefused as exc:
        return api_error(str(exc), exc.status)
    return JsonResponse(import_json(started), status=201)


@require_GET
@api_view
def api_import(request: ApiRequest, user: User, public_id: str) -> HttpResponseBase:
    membership = api_membership(request)
    if not membership.is_admin:
        return api_error("owners and admins only", 403)
    return JsonResponse(import_json(imports.import_for(membership, public_id)))
