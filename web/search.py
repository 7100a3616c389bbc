"""Search: the page (`/search/`) and the API (`/api/v1/messages?q=…&page=…`).

Both run `run_search`, which takes the scope from `archive.access` (the
tenant, and a plain user's addresses), asks the backend for one page of
ids newest first, reads those messages back through the access layer and
writes the search to the audit log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from allauth.account.decorators import verified_email_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from archive import access as archive_access
from archive.models import Message
from tenants import access
from tenants.models import AuditEvent, Membership
from web import present
from web.api import api_error, api_membership, api_view
from web.audit import audit

log = logging.getLogger(__name__)

PAGE_SIZE = 50
# Deep paging costs every backend more than it helps a person; narrow the query instead.
MAX_PAGE = 200


@dataclass
class SearchPage:
    """One page of results, shaped like Django's Page for the pager template."""

    query: str
    number: int
    count: int
    messages: list[Message]

    @property
    def paginator(self):
        return self

    @property
    def num_pages(self) -> int:
        return max(1, min(MAX_PAGE, math.ceil(self.count / PAGE_SIZE)))

    def has_previous(self) -> bool:
        return self.number > 1

    def has_next(self) -> bool:
        return self.number < self.num_pages

    def has_other_pages(self) -> bool:
        return self.has_previous() or self.has_next()

    def previous_page_number(self) -> int:
        return self.number - 1

    def next_page_number(self) -> int:
        return self.number + 1


def page_number(value: str | None) -> int:
    try:
        return min(MAX_PAGE, max(1, int(value or 1)))
    except ValueError:
        return 1


def run_search(request, membership: Membership, query: str, number: int) -> SearchPage:
    """Raises QueryError for a malformed query and SearchUnavailable when the backend is down."""
    from search import get_backend

    hits = get_backend().search(
        archive_access.search_scope(membership), query, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    messages = archive_access.messages_for(membership, list(hits.ids))
    audit(request, membership, AuditEvent.Action.SEARCH, query=query, page=number, count=hits.count)
    return SearchPage(query=query, number=number, count=hits.count, messages=messages)


@require_GET
@verified_email_required
def search_page(request):
    from search.backends.base import SearchUnavailable
    from search.query import QueryError

    membership = access.membership_for(request.user)
    query = request.GET.get("q", "").strip()
    ctx = {"membership": membership, "query": query, "error": None, "page": None}
    status = 200
    try:
        ctx["page"] = run_search(request, membership, query, page_number(request.GET.get("page")))
    except QueryError as exc:
        ctx["error"], status = str(exc), 400
    except SearchUnavailable:
        log.warning("search backend unavailable", exc_info=True)
        ctx["error"], status = "Search is unavailable right now; please try again in a minute.", 503
    return render(request, "web/search.html", ctx, status=status)


@require_GET
@api_view
def api_messages(request, user):
    from search.backends.base import SearchUnavailable
    from search.query import QueryError

    membership = api_membership(request, user)
    try:
        page = run_search(request, membership, request.GET.get("q", "").strip(), page_number(request.GET.get("page")))
    except QueryError as exc:
        return api_error(str(exc), 400)
    except SearchUnavailable:
        return api_error("search is unavailable, retry later", 503)
    addresses = access.mail_addresses(membership)
    return JsonResponse({"count": page.count, "results": [present.as_json(m, addresses) for m in page.messages]})
