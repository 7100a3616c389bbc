"""IMAP journaling: the page `/settings/m365/imap/`, under the Microsoft 365 connection.

Owners and admins only (others get 403).  The settings and the test go
through `imapjournal.config`, which audits them; the poller
(`manage.py imap_journal`) does the reading, and its state and last error
are shown here and on System Status.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from imapjournal import config
from imapjournal.models import ImapJournal
from m365 import connection as m365
from tenants.models import Membership
from web.audit import client_ip
from web.connection_check import run_connection_test
from web.roles import SignedInRequest, admin_required


class ImapForm(forms.Form):
    server = forms.CharField(
        label="IMAP server",
        max_length=260,
        help_text="Host and port of Exchange Online's IMAP (implicit TLS): outlook.office365.com:993.",
    )
    mailbox = forms.EmailField(
        label="Journal mailbox",
        max_length=320,
        required=False,
        help_text="The mailbox your journal rule delivers reports to, e.g. journal@contoso.com.",
    )
    after_archive = forms.ChoiceField(
        label="Once a report is archived",
        choices=ImapJournal.AfterArchive.choices,
        widget=forms.RadioSelect,
        help_text="Nothing is deleted or moved before the report is stored and recorded in your archive.",
    )
    move_folder = forms.CharField(
        label="Folder to move reports to",
        max_length=200,
        required=False,
        help_text="Created if it does not exist; used when reports are moved.",
    )
    enabled = forms.BooleanField(label="Enabled: read this mailbox continuously", required=False)

    def settings(self) -> config.Settings | None:
        """The checked settings, or None with the problem added to the form."""
        data = self.cleaned_data
        try:
            return config.parse(
                server=data["server"],
                mailbox=data.get("mailbox") or "",
                enabled=data.get("enabled", False),
                after_archive=data["after_archive"],
                move_folder=data.get("move_folder") or "",
            )
        except config.FieldError as exc:
            name, _, reason = str(exc).partition(": ")
            reason = reason[:1].upper() + reason[1:] + "."
            self.add_error(name if name in self.fields else None, reason)
            return None


def page_context(membership: Membership, form: ImapForm | None = None) -> dict[str, Any]:
    journal = config.journal_for(membership.tenant)
    connection = m365.connection_for(membership.tenant)
    return {
        "membership": membership,
        "journal": journal,
        "connection": connection,
        "form": form or ImapForm(initial=config.settings_of(journal)),
        "result": journal.last_test_result or None,
    }


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def imap_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = ImapForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        new = form.settings()
        if new is not None:
            config.update_journal(membership, new, ip=client_ip(request))
            messages.success(request, "IMAP journaling " + ("is on." if new.enabled else "saved (off)."))
            return redirect("imap-settings")
    # Errors come back on the page itself (200), like the other settings pages.
    return render(request, "web/imap.html", page_context(membership, form if form.is_bound else None))


@require_POST
@admin_required
def imap_test(request: SignedInRequest, membership: Membership) -> HttpResponse:
    journal = config.journal_for(membership.tenant)
    return run_connection_test(
        request,
        "imap-settings",
        missing="" if journal.is_configured else "Enter the IMAP server and the journal mailbox, and save, first.",
        check=lambda: config.test_connection(journal, actor=membership, ip=client_ip(request)),
        success=lambda result: f"Signed in to {result.mailbox}: {result.messages} messages in INBOX.",
    )
