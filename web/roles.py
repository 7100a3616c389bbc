"""Who may open a page: members of a tenant, or its admins.

Both 404 for a signed-in person of no tenant (like `access.membership_for`);
`admin_required` answers 403 to a member whose role is not enough.  Objects
of other tenants are 404 through `tenants.access`, never 403: the difference
would tell that they exist.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Concatenate, ParamSpec

from allauth.account.decorators import verified_email_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from tenants import access
from tenants.models import Membership, User

P = ParamSpec("P")
MemberView = Callable[Concatenate["SignedInRequest", Membership, P], HttpResponseBase]
View = Callable[Concatenate[HttpRequest, P], HttpResponseBase]


class SignedInRequest(HttpRequest):
    """A request past login_required or verified_email_required: its user is signed in (for the type checker)."""

    user: User


def member_required(view: MemberView[P]) -> View[P]:
    """Signed in with a verified address and a member: calls view(request, membership, ...)."""

    @wraps(view)
    def wrapper(request: SignedInRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        return view(request, access.request_member(request), *args, **kwargs)

    checked: View[P] = verified_email_required(wrapper)
    return checked


def admin_required(view: MemberView[P]) -> View[P]:
    """As `member_required`, and the member is an owner or admin (else 403)."""

    @wraps(view)
    def wrapper(
        request: SignedInRequest, membership: Membership, /, *args: P.args, **kwargs: P.kwargs
    ) -> HttpResponseBase:
        if not membership.is_admin:
            raise PermissionDenied("admins only")
        return view(request, membership, *args, **kwargs)

    return member_required(wrapper)
