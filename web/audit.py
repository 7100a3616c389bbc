"""The audit log: writing an entry for every search, view and download, and
where a tenant's admins and auditors read it: the page (`/audit/`) and the
API (`GET /api/v1/audit`, JSON or, with `Accept: text/csv`, a streamed CSV),
both filtered by who, what and when."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from allauth.account.decorators import verified_email_required
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_GET

from tenants import access
from tenants.audit import link_pending, record_event
from tenants.models import AuditEvent, Membership, User
from web.api import api_error, api_membership, api_view
from web.roles import SignedInRequest

PAGE_SIZE = 50
API_LIMIT = 500  # events per JSON page by default
API_MAX_LIMIT = 5000
CSV_BATCH = 2000
CSV_COLUMNS = ("id", "time", "actor", "api_token", "action", "target", "detail", "ip", "prev_hash", "hash")


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address; behind our proxy (ARCHIVA_BEHIND_PROXY), the address the proxy saw."""
    if settings.ARCHIVA_BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            # The proxy appends the peer it saw; anything before it is the client's say-so.
            return forwarded.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def audit(request: HttpRequest, membership: Membership, action: str, **detail: Any) -> None:
    """Record what this request did, by whom, from where, and through which API token."""
    record_event(membership, action, detail, ip=client_ip(request), token=getattr(request, "api_token", None))


def require_admin(membership: Membership) -> None:
    """Owners and admins only; an auditor or plain user of the tenant gets 403."""
    if not membership.is_admin:
        raise PermissionDenied("admins only")


def require_auditor(membership: Membership) -> None:
    """Owners, admins and auditors; a plain user gets 403."""
    if not membership.sees_all_mail:
        raise PermissionDenied("admins and auditors only")


# --- filters -------------------------------------------------------------------------------


class BadFilter(ValueError):
    """A filter value that cannot be understood; the message names the parameter."""


@dataclass(frozen=True)
class AuditFilter:
    """Who (the actor's address), what (an action) and when (from `since`, before `until`)."""

    actor: str = ""
    action: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.actor:
            events = events.filter(actor_email__iexact=self.actor)
        if self.action:
            events = events.filter(action=self.action)
        if self.since:
            events = events.filter(created_at__gte=self.since)
        if self.until:
            events = events.filter(created_at__lt=self.until)
        return events

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters, for links that keep it (pages, CSV download)."""
        params = {"actor": self.actor, "action": self.action}
        params["since"] = self.since.isoformat() if self.since else ""
        params["until"] = self.until.isoformat() if self.until else ""
        return {k: v for k, v in params.items() if v}


def parse_when(name: str, value: str, *, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO date (its midnight UTC; the next midnight for `until`) or date-time (UTC when no offset)."""
    value = value.strip()
    if not value:
        return None
    try:
        # A date first: parse_datetime would take "2026-03-12" as its midnight, the wrong end for `until`.
        day = parse_date(value)
        if day is not None:
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end_of_day else 0), dt.time(), dt.UTC)
        else:
            found = parse_datetime(value)
            if found is None:
                raise ValueError
            moment = found
    except ValueError:
        raise BadFilter(f"{name}: {value!r} is not a date (2026-01-31) or date-time (2026-01-31T08:00:00Z)") from None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=dt.UTC)


def audit_filter(params: Any) -> AuditFilter:
    """The filter from GET parameters `actor`, `action`, `since`, `until`; BadFilter for a bad value."""
    action = params.get("action", "").strip()
    if action and action not in AuditEvent.Action.values:
        raise BadFilter(f"action: {action!r} is not one of {', '.join(AuditEvent.Action.values)}")
    return AuditFilter(
        actor=params.get("actor", "").strip(),
        action=action,
        since=parse_when("since", params.get("since", "")),
        until=parse_when("until", params.get("until", ""), end_of_day=True),
    )


# --- the page --------------------------------------------------------------------------------


@require_GET
@verified_email_required
def audit_log(request: SignedInRequest) -> HttpResponse:
    """The tenant's audit log, for its admins and auditors (reading it is not itself an event)."""
    membership = access.request_member(request)
    require_auditor(membership)
    ctx: dict[str, Any] = {
        "membership": membership,
        "actions": AuditEvent.Action.choices,
        "actors": access.audit_actors(membership.tenant),
        "values": {k: request.GET.get(k, "") for k in ("actor", "action", "since", "until")},
        "page": None,
        "error": None,
    }
    try:
        chosen = audit_filter(request.GET)
    except BadFilter as exc:
        ctx["error"] = str(exc)
        return render(request, "web/audit.html", ctx, status=400)
    link_pending(membership.tenant.pk, wait=True)  # what is shown carries its place in the chain
    events = chosen.apply(access.audit_events(membership.tenant))
    ctx["page"] = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    ctx["filter_query"] = urlencode(chosen.as_params())
    ctx["filtered"] = bool(chosen.as_params())
    return render(request, "web/audit.html", ctx)


# --- the API -------------------------------------------------------------------------------------


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "time": event.created_at.isoformat(),
        "actor": event.actor_email,
        "api_token": event.token_label or None,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
        "ip": event.ip,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def wants_csv(request: HttpRequest) -> bool:
    """`Accept: text/csv` (or `?format=csv`, for a download link in a browser)."""
    accept = request.headers.get("Accept", "")
    return request.GET.get("format") == "csv" or any(
        part.split(";")[0].strip() == "text/csv" for part in accept.split(",")
    )


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading = + - @ (a formula, OWASP's CSV
    injection) gets a ' before it; token names and targets are typed by people."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class Echo:
    """A file-like object whose write returns the line, for csv.writer into a streamed response."""

    def write(self, value: str) -> str:
        return value


def csv_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    """The header, then every event oldest first, read in batches by id: memory stays flat however long the log."""
    writer = csv.writer(Echo())
    yield writer.writerow(CSV_COLUMNS)
    last = 0
    while True:
        batch = list(events.filter(pk__gt=last).order_by("pk")[:CSV_BATCH])
        if not batch:
            return
        for event in batch:
            row = event_json(event)
            row["detail"] = json.dumps(event.detail, sort_keys=True, ensure_ascii=False)
            yield writer.writerow([cell(row[c]) for c in CSV_COLUMNS])
        last = batch[-1].pk


def api_limit(value: str | None) -> int:
    try:
        limit = int(value) if value else API_LIMIT
    except ValueError:
        raise BadFilter(f"limit: {value!r} is not a number") from None
    if not 1 <= limit <= API_MAX_LIMIT:
        raise BadFilter(f"limit: between 1 and {API_MAX_LIMIT}")
    return limit


@require_GET
@api_view
def api_audit(request: HttpRequest, user: User) -> HttpResponseBase:
    """`GET /api/v1/audit?since=&until=&action=&actor=`: events oldest first.

    JSON pages of `limit` events with `next` (a link that continues after the
    last id); with `Accept: text/csv` every matching event as one streamed CSV,
    itself recorded as an export of the audit log.
    """
    membership = api_membership(request)
    if not membership.sees_all_mail:
        return api_error("owners, admins and auditors only", 403)
    try:
        chosen = audit_filter(request.GET)
        limit = api_limit(request.GET.get("limit"))
        after = int(request.GET.get("after") or 0)
    except BadFilter as exc:
        return api_error(str(exc), 400)
    except ValueError:
        return api_error(f"after: {request.GET.get('after')!r} is not an event id", 400)
    link_pending(membership.tenant.pk, wait=True)  # what is shown carries its place in the chain
    events = chosen.apply(access.audit_events(membership.tenant))
    if wants_csv(request):
        audit(request, membership, AuditEvent.Action.AUDIT_EXPORTED, format="csv", filters=chosen.as_params())
        response = StreamingHttpResponse(csv_rows(events), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
        return response
    batch = list(events.filter(pk__gt=after).order_by("pk")[: limit + 1])
    more = len(batch) > limit
    batch = batch[:limit]
    next_url = None
    if more:
        next_url = reverse("api-audit") + "?" + urlencode({**chosen.as_params(), "limit": limit, "after": batch[-1].pk})
    return JsonResponse({"results": [event_json(e) for e in batch], "next": next_url})
