"""One archived message: the page (`/messages/<id>/`), its attachments
(`/messages/<id>/attachments/<n>`) and the original (`/api/v1/messages/<id>.eml`).

Messages come from `archive.access.message_for` (404 alike for missing,
another tenant's, and a plain user's not-theirs); every view and download
is written to the audit log.  Bytes are read from the tenant's bucket and
checked against their SHA-256 on every read.
"""

from __future__ import annotations

from typing import Any

from allauth.account.decorators import verified_email_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from archive import access as archive_access
from archive import actions, documents
from archive.models import Message
from archive.parser import mime
from compliance.holds import Hold, holds_covering
from search import SearchUnavailable
from tenants import access
from tenants.models import AuditEvent, Membership, User
from web import present
from web.api import api_membership, api_view
from web.audit import audit
from web.csp import csp_override
from web.roles import SignedInRequest
from web.sanitize import frame_document, sanitize


def _body(raw: bytes) -> dict[str, Any]:
    """The body to show: sanitized HTML for the sandboxed frame, else plain
    text; and why it could not be shown in full, when it could not."""
    body = documents.body_for_display(raw)
    note = {"body_note": body.body_note}
    if body.body_html:
        safe = sanitize(body.body_html)
        return {"html_frame": frame_document(safe.html), "blocked": safe.blocked, "text": None, **note}
    return {"html_frame": None, "blocked": 0, "text": body.body_text, **note}


def _attachments(message: Message, raw: bytes) -> list[dict[str, Any]]:
    """The list kept when the message was archived; worked out (and kept) for an older message."""
    if message.attachment_list is not None:
        kept: list[dict[str, Any]] = message.attachment_list
        return kept
    return actions.remember_attachment_list(message, raw)


@require_GET
@never_cache
@verified_email_required
# The site's policy with images limited to ours and inline ones, whatever the
# operator added: the srcdoc frame inherits it, so a remote image that
# slipped through sanitizing still does not load.
@csp_override(img_src=["'self'", "data:"], frame_src=["'self'"], connect_src=["'none'"])
def message_view(request: SignedInRequest, message_id: int) -> HttpResponse:
    membership = access.request_member(request)
    message = archive_access.message_for(membership, message_id)
    raw = documents.read_readable(message)
    is_mail = message.kind == Message.Kind.MAIL
    ctx = {
        "membership": membership,
        "message": message,
        "recipients": present.recipients_for(message, access.mail_addresses(membership)),
        "attachments": _attachments(message, raw) if is_mail else [],
        "reports": archive_access.deliveries_of(message) if membership.sees_all_mail else None,
        "sources": archive_access.sources_for(membership, message),
        # Holds are for those who see all mail (web/holds.py says why).
        "holds": _holds(membership, message),
        # An event's or a contact's text as archived (its iCalendar or vCard is no MIME to render).
        **(
            _body(raw)
            if is_mail
            else {"html_frame": None, "blocked": 0, "text": documents.stored_content(message).body}
        ),
    }
    ctx.update(_result_list(request, membership))
    ctx["print_view"] = request.GET.get("view") == "print"
    audit(request, membership, AuditEvent.Action.VIEW, message=message.pk)
    return render(request, "web/message.html", ctx)


def _result_list(request: SignedInRequest, membership: Membership) -> dict[str, Any]:
    """Where the message was opened from: "← Search" back to the same query,
    order and page, and the previous and next results (`?q=&sort=&n=`, n
    the 0-based place in the results)."""
    from web.search import PAGE_SIZE, neighbours, search_url, sort_of

    query = request.GET.get("q", "").strip()
    sort = sort_of(request.GET.get("sort"))
    try:
        position = int(request.GET.get("n", ""))
    except ValueError:
        return {"back_url": search_url("", sort) if "q" not in request.GET else search_url(query, sort)}
    back = search_url(query, sort, position // PAGE_SIZE + 1)
    before, after = neighbours(membership, query, sort, position)

    def link(message_id: int | None, place: int) -> str | None:
        if message_id is None:
            return None
        params = QueryDict(mutable=True)
        params.update({"q": query, "sort": sort, "n": str(place)})
        return f"{reverse('message', args=[message_id])}?{params.urlencode()}"

    return {
        "back_url": back,
        "previous_url": link(before, position - 1),
        "next_url": link(after, position + 1),
        "result_place": position + 1,
    }


def _holds(membership: Membership, message: Message) -> list[Hold] | None:
    """The holds covering the message, for those who see all mail (web/holds.py
    says why); None when search, which evaluates hold queries, is not answering."""
    if not membership.sees_all_mail:
        return []
    try:
        return holds_covering(membership.tenant, message)
    except SearchUnavailable:
        return None


def _download(data: bytes, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(data, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, filename or "download")
    # Never rendered by us: an HTML attachment must not run on our origin.
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


@require_GET
@verified_email_required
def attachment(request: SignedInRequest, message_id: int, number: int) -> HttpResponseBase:
    membership = access.request_member(request)
    message = archive_access.message_for(membership, message_id)
    parts = mime.attachments(documents.read_readable(message))
    if not 1 <= number <= len(parts):
        raise Http404("no such attachment")
    part = parts[number - 1]
    audit(request, membership, AuditEvent.Action.DOWNLOAD, message=message.pk, attachment=number, name=part.name)
    # Served as opaque bytes whatever the sender claimed the type was.
    return _download(part.payload, part.name, "application/octet-stream")


@require_GET
@api_view
def original_eml(request: HttpRequest, user: User, message_id: int) -> HttpResponseBase:
    """The original message as Exchange delivered it (not the journal wrapper)."""
    membership = api_membership(request)
    message = archive_access.message_for(membership, message_id)
    data = documents.read_original(message)
    suffix, content_type = _ORIGINAL_TYPES.get(message.kind, _ORIGINAL_TYPES[Message.Kind.MAIL])
    audit(request, membership, AuditEvent.Action.DOWNLOAD, message=message.pk, format=suffix)
    return _download(
        data, f"{message.kind if message.kind != 'mail' else 'message'}-{message.pk}.{suffix}", content_type
    )


# An item's original as the mailbox held it: MIME, iCalendar or vCard.
_ORIGINAL_TYPES: dict[str, tuple[str, str]] = {
    Message.Kind.MAIL: ("eml", "message/rfc822"),
    Message.Kind.EVENT: ("ics", "text/calendar"),
    Message.Kind.CONTACT: ("vcf", "text/vcard"),
}
