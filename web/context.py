from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from regions.current import current_region, other_regions
from tenants import access

OUTBOX_BACKEND = "web.mail.OutboxBackend"


def site(request: HttpRequest) -> dict[str, Any]:
    """What every page may show: the region this deployment serves, and the
    visitor's membership (looked up only if a template asks, and only once a
    request; a view's own `membership` takes precedence)."""
    return {
        "region": current_region(),
        "other_regions": other_regions(),
        "mail_to_outbox": settings.EMAIL_BACKEND == OUTBOX_BACKEND,
        "membership": SimpleLazyObject(lambda: access.request_membership(request)),
    }
