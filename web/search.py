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
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
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


def sort_of(value: str | None) -> str:
    from search.backends.base import NEWEST, SORTS

    return value if value in SORTS else NEWEST


# The search form's fields, each writing one term of the query language.
FORM_FIELDS = ("from", "to", "cc", "bcc", "subject", "folder", "after", "before")


def composed_query(params: QueryDict) -> str | None:
    """The box's query with the form's fields written into it, when the form
    was sent without JavaScript (the script writes them into the box as you
    type); None when no form field was sent."""
    from search.query import with_field

    if not any(f"f_{name}" in params for name in (*FORM_FIELDS, "has")):
        return None
    query = params.get("q", "")
    for name in FORM_FIELDS:
        if f"f_{name}" in params:
            query = with_field(query, name, params.get(f"f_{name}", ""))
    return with_field(query, "has", "attachment" if params.get("f_has") else "")


def search_url(query: str, sort: str, number: int = 1) -> str:
    """The search page for this query, order and page (what "← Search" returns to)."""
    from search.backends.base import NEWEST

    params = QueryDict(mutable=True)
    if query:
        params["q"] = query
    if sort != NEWEST:
        params["sort"] = sort
    if number > 1:
        params["page"] = str(number)
    return reverse("search") + (f"?{params.urlencode()}" if params else "")


def run_search(
    request: HttpRequest, membership: Membership, query: str, number: int, sort: str = "newest"
) -> SearchPage:
    """Raises QueryError for a malformed query and SearchUnavailable when the backend is down."""
    from search import get_backend

    hits = get_backend().search(
        archive_access.search_scope(membership), query, offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE, sort=sort
    )
    messages = archive_access.messages_for(membership, list(hits.ids))
    audit(request, membership, AuditEvent.Action.SEARCH, query=query, page=number, count=hits.count)
    return SearchPage(messages, number, hits.count)


def neighbours(membership: Membership, query: str, sort: str, position: int) -> tuple[int | None, int | None]:
    """The ids before and after the result at `position` (0-based) of this
    search, for a message's previous/next links; (None, None) when search
    is not answering or the query no longer parses."""
    from search import get_backend
    from search.backends.base import SearchUnavailable
    from search.query import QueryError

    if not 0 <= position < MAX_PAGE * PAGE_SIZE:
        return None, None
    start = max(0, position - 1)
    try:
        ids = get_backend().search(archive_access.search_scope(membership), query, offset=start, limit=3, sort=sort).ids
    except (QueryError, SearchUnavailable):
        return None, None
    at = position - start
    before = ids[at - 1] if at >= 1 and len(ids) >= at else None
    after = ids[at + 1] if len(ids) > at + 1 else None
    return before, after


SORT_CHOICES = (("newest", "Newest first"), ("oldest", "Oldest first"), ("relevance", "Best match first"))


def form_values(query: str) -> dict[str, str]:
    """The form's fields as the query sets them (the last term of each), so the
    form shows what the box says."""
    import re

    values: dict[str, str] = {}
    for name in (*FORM_FIELDS, "has"):
        found = re.findall(rf'(?:(?<=\s)|^){name}:(?:"([^"]*)"|(\S+))', query, flags=re.IGNORECASE)
        if found:
            quoted, plain = found[-1]
            values[name] = quoted or plain
    return values


@require_GET
@verified_email_required
def search_page(request: SignedInRequest) -> HttpResponse:
    from search.backends.base import SearchUnavailable
    from search.query import QueryError

    membership = access.request_member(request)
    sort = sort_of(request.GET.get("sort"))
    composed = composed_query(request.GET)
    if composed is not None:
        # The form without JavaScript: show the query it wrote, so the box teaches the syntax.
        return HttpResponseRedirect(search_url(composed.strip(), sort))
    query = request.GET.get("q", "").strip()
    ctx = {
        "membership": membership,
        "query": query,
        "sort": sort,
        "sorts": SORT_CHOICES,
        "error": None,
        "page": None,
        "form_values": form_values(query),
        # The member's own mailboxes' folders beside the results (`folder:` links).
        "folder_trees": archive_access.folder_trees(membership),
    }
    status = 200
    try:
        ctx["page"] = run_search(request, membership, query, page_number(request.GET.get("page")), sort)
        params = QueryDict(mutable=True)
        params.update({"q": query, "sort": sort})
        ctx["result_params"] = params.urlencode() + "&"
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

    membership = api_membership(request)
    try:
        page = run_search(
            request,
            membership,
            request.GET.get("q", "").strip(),
            page_number(request.GET.get("page")),
            sort_of(request.GET.get("sort")),
        )
    except QueryError as exc:
        return api_error(str(exc), 400)
    except SearchUnavailable:
        return api_error("search is unavailable, retry later", 503)
    addresses = access.mail_addresses(membership)
    return JsonResponse({"count": page.total, "results": [present.as_json(m, addresses) for m in page.messages]})
