"""Search: the page (`/search/`) and the API (`/api/v1/messages?q=…&page=…`).

Both run `run_search`, which takes the scope from `archive.access` (the
tenant, and a plain user's addresses), asks the backend for one page of
ids newest first, reads those messages back through the access layer and
writes the search to the audit log.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.decorators import verified_email_required
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from archive import access as archive_access
from archive.models import Message
from tenants import access
from tenants.models import AuditEvent, Membership, User
from web import present
from web.api import api_error, api_membership, api_view
from web.audit import audit
from web.roles import SignedInRequest

log = logging.getLogger(__name__)

PAGE_SIZE = 50
# Deep paging costs every backend more than it helps a person; narrow the query instead.
MAX_PAGE = 200


class SearchPage(Page[Any]):  # Any: its paginator counts a range, its objects are Messages
    """One page of hits: Django's Page over the backend's count; the backend already cut it (offset/limit)."""

    def __init__(self, messages: list[Message], number: int, count: int) -> None:
        # The paginator only counts: a range has a length without a list. Deep pages stop at MAX_PAGE.
        super().__init__(messages, number, Paginator(range(min(count, MAX_PAGE * PAGE_SIZE)), PAGE_SIZE))
        self.total = count  # every hit in scope (Page.count is Sequence.count)

    @property
    def messages(self) -> list[Message]:
        return list(self.object_list)


def page_number(value: str | None) -> int:
    try:
        return min(MAX_PAGE, max(1, int(value or 1)))
    except ValueError:
        return 1


def run_search(request: HttpRequest, membership: Membership, query: str, number: int) -> SearchPage:
    """Raises QueryError for a malformed query and SearchUnavailable when the backend is down."""
    from search import get_backend

    hits = get_backend().search(
        archive_access.search_scope(membership), query, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    messages = archive_access.messages_for(membership, list(hits.ids))
    audit(request, membership, AuditEvent.Action.SEARCH, query=query, page=number, count=hits.count)
    return SearchPage(messages, number, hits.count)


@require_GET
@verified_email_required
def search_page(request: SignedInRequest) -> HttpResponse:
    from search.backends.base import SearchUnavailable
    from search.query import QueryError

    membership = access.membership_for(request.user)
    query = request.GET.get("q", "").strip()
    ctx = {
        "membership": membership,
        "query": query,
        "error": None,
        "page": None,
        # The member's own mailboxes' folders beside the results (`folder:` links).
        "folder_trees": archive_access.folder_trees(membership),
    }
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
def api_messages(request: HttpRequest, user: User) -> HttpResponse:
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
    return JsonResponse({"count": page.total, "results": [present.as_json(m, addresses) for m in page.messages]})
