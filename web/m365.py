"""The Microsoft 365 connection: the page `/settings/m365/` and `/api/v1/m365/…`.

Owners and admins only (auditors and plain users get 403, other tenants'
certificates 404).  Every change goes through `m365.connection` and is
audited there.  The private keys never appear here: certificates are shown
by thumbprint and expiry, and downloaded as their public `.cer`.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from m365 import access as m365_access
from m365 import connection as m365
from m365.certificates import Subject, SubjectError, der_bytes
from m365.directory import sync_mailboxes
from m365.graph import GraphError
from m365.models import Certificate, Connection
from tenants.models import ApiToken, Membership, User
from web.api import ApiRequest, api_error, api_membership, api_view, api_write_view
from web.audit import client_ip
from web.connection_check import run_connection_test
from web.roles import SignedInRequest, admin_required

CERTIFICATE_FIELDS = ("common_name", "org_unit", "organization", "locality", "state", "country")


def webhook_url() -> str:
    return f"{settings.SITE_ROOT}/o365"


def cer_response(certificate: Certificate) -> HttpResponse:
    response = HttpResponse(der_bytes(certificate), content_type="application/pkix-cert")
    name = f"archiva-{certificate.thumbprint[:12]}.cer"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def certificate_json(certificate: Certificate, *, pem: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": certificate.pk,
        "thumbprint": certificate.thumbprint.upper(),
        "not_before": certificate.not_before.isoformat(),
        "not_after": certificate.not_after.isoformat(),
        "subject": {name: getattr(certificate, name) for name in CERTIFICATE_FIELDS},
    }
    if pem:
        document["certificate_pem"] = certificate.certificate_pem
    return document


def connection_json(connection: Connection) -> dict[str, Any]:
    return {
        **m365.settings_of(connection),
        "webhook_url": webhook_url(),
        "organization": connection.organization_name or None,
        "permissions": [{"permission": name, "needed_for": what} for name, what in m365.PERMISSIONS],
        "last_test": connection.last_test_result or None,
        "certificates": [certificate_json(c) for c in m365.certificates(connection)],
        "mailboxes": m365_access.mailbox_count(connection.tenant),
        "mailboxes_synced_at": connection.mailboxes_synced_at.isoformat() if connection.mailboxes_synced_at else None,
    }


# --- forms ------------------------------------------------------------------------


class GuidField(forms.CharField):
    def __init__(self, label: str, **kwargs: Any) -> None:
        super().__init__(label=label, max_length=38, **kwargs)

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        try:
            return m365.parse_guid(str(self.label), text)
        except m365.FieldError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise forms.ValidationError(reason[:1].upper() + reason[1:] + ".") from None


class ConnectionForm(forms.Form):
    tenant_id = GuidField("Directory (tenant) ID", help_text="From the app registration's Overview in Azure.")
    client_id = GuidField("Application (client) ID", help_text="From the same Overview page.")
    mail_from = forms.EmailField(
        label="Mail from", required=False, help_text="The mailbox notices are sent from (needs Mail.Send)."
    )
    sync_folders = forms.BooleanField(label="Synchronize folders", required=False)


class CertificateForm(forms.Form):
    common_name = forms.CharField(label="Common name (CN)", max_length=64)
    org_unit = forms.CharField(label="Organizational unit (OU)", max_length=64, required=False)
    organization = forms.CharField(label="Organization (O)", max_length=64, required=False)
    locality = forms.CharField(label="City (L)", max_length=128, required=False)
    state = forms.CharField(label="State or province (ST)", max_length=128, required=False)
    country = forms.CharField(label="Country (C)", max_length=2, required=False, help_text="Two letters, e.g. US.")

    def subject(self) -> Subject:
        return Subject(**{name: self.cleaned_data.get(name) or "" for name in CERTIFICATE_FIELDS})


# --- the page ----------------------------------------------------------------------


def page_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    connection = m365.connection_for(membership.tenant)
    initial = {**m365.settings_of(connection)}
    return {
        "membership": membership,
        "connection": connection,
        "form": extra.pop("form", None) or ConnectionForm(initial=initial),
        "certificate_form": extra.pop("certificate_form", None) or CertificateForm(),
        "certificates": m365.certificates(connection),
        "webhook_url": webhook_url(),
        "permissions": m365.PERMISSIONS,
        "result": connection.last_test_result or None,
        "mailboxes": m365_access.mailbox_count(membership.tenant),
        **extra,
    }


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def settings_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = ConnectionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        m365.update_connection(
            membership,
            directory_id=data["tenant_id"],
            client_id=data["client_id"],
            mail_from=data["mail_from"] or "",
            sync_folders=data["sync_folders"],
            ip=client_ip(request),
        )
        messages.success(request, "Connection saved.")
        return redirect("m365-settings")
    # Errors come back on the page itself (200), like the other settings pages.
    return render(request, "web/m365.html", page_context(membership, form=form if form.is_bound else None))


@require_POST
@admin_required
def new_certificate(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = CertificateForm(request.POST)
    if form.is_valid():
        try:
            certificate = m365.new_certificate(membership, form.subject(), ip=client_ip(request))
        except SubjectError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                f"Certificate {certificate.thumbprint.upper()} created. Download its .cer and upload it to the "
                "app registration in Azure (Certificates & secrets).",
            )
            return redirect("m365-settings")
    return render(request, "web/m365.html", page_context(membership, certificate_form=form))


@require_GET
@admin_required
def download_certificate(request: SignedInRequest, membership: Membership, certificate_id: int) -> HttpResponse:
    return cer_response(m365_access.certificate(membership.tenant, certificate_id))


@require_POST
@admin_required
def test(request: SignedInRequest, membership: Membership) -> HttpResponse:
    connection = m365.connection_for(membership.tenant)
    missing = "Enter the directory (tenant) ID and the application (client) ID first."
    return run_connection_test(
        request,
        "m365-settings",
        missing="" if connection.is_configured else missing,
        check=lambda: m365.check_connection(connection, actor=membership, ip=client_ip(request)),
        success=lambda result: f"Connected to {result.organization or 'Microsoft 365'}.",
    )


@require_POST
@admin_required
def sync_now(request: SignedInRequest, membership: Membership) -> HttpResponse:
    connection = m365.connection_for(membership.tenant)
    try:
        synced = sync_mailboxes(connection, actor=membership, ip=client_ip(request))
    except GraphError as exc:
        messages.error(request, f"The mailbox list could not be read: {exc.message}")
    else:
        messages.success(
            request,
            f"{synced.mailboxes} mailboxes synchronised; {synced.aliases_added} aliases added, "
            f"{synced.aliases_removed} removed.",
        )
    return redirect(reverse("m365-settings") + "#mailboxes")


# --- the API -----------------------------------------------------------------------


def api_token(request: HttpRequest) -> ApiToken | None:
    """The API token a request came with (for the audit log), None for a session."""
    token: ApiToken | None = getattr(request, "api_token", None)
    return token


def admin_membership(request: HttpRequest, user: User) -> Membership | None:
    membership = api_membership(request)
    return membership if membership.is_admin else None


def valid_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        forms.EmailField(required=False).clean(value)
    except forms.ValidationError:
        return False
    return True


def json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


@require_http_methods(["GET", "PUT"])
@api_write_view
def api_connection(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = admin_membership(request, user)
    if membership is None:
        return api_error("owners and admins only", 403)
    connection = m365.connection_for(membership.tenant)
    if request.method == "PUT":
        body = json_body(request)
        if body is None:
            return api_error("the body must be a JSON object", 400)
        unknown = set(body) - {"tenant_id", "client_id", "mail_from", "sync_folders"}
        if unknown:
            return api_error(f"unknown fields: {', '.join(sorted(unknown))}", 400)
        current = m365.settings_of(connection)
        try:
            directory_id = m365.parse_guid("tenant_id", body.get("tenant_id", current["tenant_id"]))
            client_id = m365.parse_guid("client_id", body.get("client_id", current["client_id"]))
        except m365.FieldError as exc:
            return api_error(str(exc), 400)
        mail_from = body.get("mail_from", current["mail_from"]) or ""
        if not valid_address(mail_from):
            return api_error("mail_from: an email address, or empty", 400)
        sync_folders = body.get("sync_folders", current["sync_folders"])
        if not isinstance(sync_folders, bool):
            return api_error("sync_folders: true or false", 400)
        connection = m365.update_connection(
            membership,
            directory_id=directory_id,
            client_id=client_id,
            mail_from=mail_from,
            sync_folders=sync_folders,
            ip=client_ip(request),
            token=api_token(request),
        )
    return JsonResponse(connection_json(connection))


@require_POST
@api_write_view
def api_certificates(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = admin_membership(request, user)
    if membership is None:
        return api_error("owners and admins only", 403)
    body = json_body(request)
    if body is None:
        return api_error("the body must be a JSON object", 400)
    unknown = set(body) - set(CERTIFICATE_FIELDS)
    if unknown:
        return api_error(f"unknown fields: {', '.join(sorted(unknown))}", 400)
    if not all(isinstance(body.get(name, ""), str) for name in CERTIFICATE_FIELDS):
        return api_error("every subject field is a string", 400)
    try:
        certificate = m365.new_certificate(
            membership,
            Subject(**{name: body.get(name, "") for name in CERTIFICATE_FIELDS}),
            ip=client_ip(request),
            token=api_token(request),
        )
    except SubjectError as exc:
        return api_error(str(exc), 400)
    return JsonResponse(certificate_json(certificate, pem=True), status=201)


@require_GET
@api_view
def api_certificate_cer(request: ApiRequest, user: User, certificate_id: int) -> HttpResponseBase:
    membership = admin_membership(request, user)
    if membership is None:
        return api_error("owners and admins only", 403)
    return cer_response(m365_access.certificate(membership.tenant, certificate_id))


@require_POST
@api_write_view
def api_test(request: ApiRequest, user: User) -> HttpResponseBase:
    membership = admin_membership(request, user)
    if membership is None:
        return api_error("owners and admins only", 403)
    connection = m365.connection_for(membership.tenant)
    if not connection.is_configured:
        return api_error("set tenant_id and client_id first (PUT /api/v1/m365/connection)", 409)
    result = m365.check_connection(connection, actor=membership, ip=client_ip(request), token=api_token(request))
    return JsonResponse(result.as_json())
