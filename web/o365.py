"""Microsoft Graph change-notification webhook (`/o365`).

Graph validates a subscription by POSTing `?validationToken=…` and expects
the token back as text/plain within 10 seconds.  Notifications arrive as
JSON; handling them comes with the Graph issue, so for now they are only
checked for shape and acknowledged.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


@csrf_exempt  # Microsoft Graph posts here; there is no session to forge
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("validationToken")
    if token is not None:
        return HttpResponse(token, content_type="text/plain; charset=utf-8")
    if request.body.strip():
        try:
            json.loads(request.body)
        except ValueError:
            return HttpResponseBadRequest("the body is not JSON", content_type="text/plain; charset=utf-8")
    return HttpResponse(status=202)
