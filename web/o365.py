"""Microsoft Graph change-notification webhook (`/o365`).

`GET` answers 405 with the body the setup guide's reachability check looks
for.  Graph validates a subscription by POSTing `?validationToken=…` and
expects the token back as text/plain within 10 seconds (answered before any
database work).  A notification batch is checked (every item's subscription
known, its clientState and directory matching, else 403 and nothing
stored), stored, and answered 202 well within Graph's 3 seconds; a worker
processes it (`m365.notifications`).
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from m365.notifications import BadBatch, Refused, accept

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
MAX_TOKEN = 1024  # Graph's tokens are short; an echo never needs to be large


def _text(body: str, status: int) -> HttpResponse:
    return HttpResponse(body, status=status, content_type=TEXT)


@csrf_exempt  # Microsoft Graph posts here; there is no session to forge
def webhook(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = _text("Failure: 405 Method Not Allowed", 405)
        response["Allow"] = "POST"
        return response
    token = request.GET.get("validationToken")
    if token is not None:
        if len(token) > MAX_TOKEN:
            return _text("validationToken is too long", 400)
        return _text(token, 200)
    try:
        ids = accept(request.body)
    except BadBatch as exc:
        return _text(str(exc), 400)
    except Refused as exc:
        # The reason is logged, not answered (a prober learns nothing about
        # which subscriptions exist); the body is not logged: it holds a clientState.
        log.warning("/o365 refused a notification batch: %s", exc)
        return _text("Forbidden: not a notification of an active subscription of ours", 403)
    log.info("/o365 stored %d notifications", len(ids))
    return HttpResponse(status=202)
