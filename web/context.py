from django.conf import settings

from regions.current import current_region

OUTBOX_BACKEND = "web.mail.OutboxBackend"


def site(request):
    """What every page may show: the region this deployment serves."""
    return {
        "region": current_region(),
        "mail_to_outbox": settings.EMAIL_BACKEND == OUTBOX_BACKEND,
    }
