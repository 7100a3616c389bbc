"""Who may open a page: members of a tenant, or its admins.

Both 404 for a signed-in person of no tenant (like `access.membership_for`);
`admin_required` answers 403 to a member whose role is not enough.  Objects
of other tenants are 404 through `tenants.access`, never 403: the difference
would tell that they exist.
"""

from __future__ import annotations

from functools import wraps

from allauth.account.decorators import verified_email_required
from django.core.exceptions import PermissionDenied

from tenants import access


def member_required(view):
    """Signed in with a verified address and a member: calls view(request, membership, ...)."""

    @wraps(view)
    @verified_email_required
    def wrapper(request, *args, **kwargs):
        return view(request, access.membership_for(request.user), *args, **kwargs)

    return wrapper


def admin_required(view):
    """As `member_required`, and the member is an owner or admin (else 403)."""

    @wraps(view)
    @member_required
    def wrapper(request, membership, *args, **kwargs):
        if not membership.is_admin:
            raise PermissionDenied("admins only")
        return view(request, membership, *args, **kwargs)

    return wrapper
