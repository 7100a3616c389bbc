"""The domains page (`/domains/`): claim a mail domain, prove it with DNS.

Verified domains route the Exchange connector's validation mail (sent to
`archive@archive.<site>`) into this tenant's archive.  Admins only.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from infra.dns import LookupFailed
from regions.current import current_region
from tenants import access, actions
from tenants.actions import ActionRefused
from tenants.models import Membership
from web.audit import client_ip
from web.forms import DomainForm
from web.roles import admin_required

log = logging.getLogger(__name__)


@require_http_methods(["GET", "POST"])
@admin_required
def domains(request: HttpRequest, membership: Membership) -> HttpResponse:
    form = DomainForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            domain = actions.add_domain(membership, form.cleaned_data["name"], ip=client_ip(request))
        except ActionRefused as refused:
            form.add_error("name", str(refused))
        else:
            messages.success(request, f"{domain.name} added. Create its TXT record, then check it.")
            return redirect("domains")
    context = {
        "membership": membership,
        "domains": access.domains(membership.tenant),
        "form": form,
        "region": current_region(),
    }
    return render(request, "domains/domains.html", context)


@require_POST
@admin_required
def verify(request: HttpRequest, membership: Membership, domain_id: int) -> HttpResponse:
    domain = access.domain(membership.tenant, domain_id)
    try:
        actions.verify_domain(domain, actor=membership, ip=client_ip(request))
    except ActionRefused as refused:
        messages.error(request, str(refused))
    except LookupFailed as failed:
        log.warning("DNS lookup for %s failed: %s", domain.txt_name, failed)
        messages.error(request, f"The DNS did not answer for {domain.txt_name}. Try again in a few minutes.")
    else:
        messages.success(request, f"{domain.name} is verified.")
    return redirect("domains")


@require_POST
@admin_required
def remove(request: HttpRequest, membership: Membership, domain_id: int) -> HttpResponse:
    domain = access.domain(membership.tenant, domain_id)
    actions.remove_domain(membership, domain, ip=client_ip(request))
    messages.success(request, f"{domain.name} removed.")
    return redirect("domains")
