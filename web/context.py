from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest
from django.utils.functional import SimpleLazyObject

from regions.current import current_region, other_regions
from tenants import access
from tenants.models import Membership

OUTBOX_BACKEND = "web.mail.OutboxBackend"


def membership_or_none(request: HttpRequest) -> Membership | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    try:
        return access.membership_for(user)
    except Http404:
        return None


def site(request: HttpRequest) -> dict[str, Any]:
    """What every page may show: the region this deployment serves, and the
    visitor's membership (looked up only if a template asks; a view's own
    `membership` takes precedence)."""
    return {
        "region": current_region(),
        "other_regions": other_regions(),
        "mail_to_outbox": settings.EMAIL_BACKEND == OUTBOX_BACKEND,
        "membership": SimpleLazyObject(lambda: membership_or_none(request)),
    }
