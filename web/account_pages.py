"""What allauth's account pages lack: "send the confirmation link again"
from the pages where a person waits for it, signed in or not."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from allauth.core import ratelimit
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST


@require_POST
def resend_confirmation(request: HttpRequest) -> HttpResponse:
    """Mail a new confirmation link to an address that awaits one.

    The answer is the same whether the address exists, is confirmed already
    or is unknown (ACCOUNT_PREVENT_ENUMERATION), and allauth's
    `confirm_email` rate limit caps how often one address is mailed.
    """
    email = request.POST.get("email", "").strip()
    try:
        validate_email(email)
    except ValidationError:
        messages.error(request, "Enter the email address you signed up with, e.g. anna@contoso.com.")
        return redirect("account_email_verification_sent")
    address = EmailAddress.objects.filter(email__iexact=email, verified=False).select_related("user").first()
    if address is not None and ratelimit.consume(request, action="confirm_email", key=email.lower()):
        address.send_confirmation(request)
    messages.info(request, f"If {email} is waiting to be confirmed, a new link is on its way.")
    return redirect("account_email_verification_sent")
