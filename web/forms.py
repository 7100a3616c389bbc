"""Forms of the portal: sign-up's own field, the team, domains."""

from __future__ import annotations

import re

from django import forms
from django.utils.html import format_html, format_html_join

from regions.current import current_region
from tenants.models import Membership, Role

ROLE_HELP: dict[str, str] = {
    Role.OWNER: "everything, including managing owners",
    Role.ADMIN: "everything in the archive, the team and domains",
    Role.AUDITOR: "searches and reads all mail, changes nothing",
    Role.USER: "searches their own mail only",
}


class SignupForm(forms.Form):
    """Base of allauth's sign-up form (ACCOUNT_SIGNUP_FORM_CLASS).

    The tenant itself is created by `AccountAdapter.save_user`, in the same
    transaction as the user, so `signup` has nothing left to do.  With an
    invitation in the session (see `web.adapter`) the form joins the
    inviting tenant instead: no organization field, and the address must
    be the invited one.
    """

    organization = forms.CharField(
        label="Organization name",
        max_length=200,
        help_text="Your company as your colleagues will see it. You can change it later.",
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
    field_order = ["organization", "email", "password1", "password2"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from allauth.core import context

        from web.adapter import invitation_in_session

        self.invitation = invitation_in_session(context.request) if context.request else None
        if self.invitation is not None:
            del self.fields["organization"]
            self.initial.setdefault("email", self.invitation.email)

    def clean_organization(self) -> str:
        name = " ".join(self.cleaned_data["organization"].split())
        if not name:
            raise forms.ValidationError("Enter the name of your organization.")
        return name

    def clean(self):
        cleaned = super().clean()
        email = cleaned.get("email")
        if self.invitation is not None and email and email.lower() != self.invitation.email:
            self.add_error(
                "email",
                f"This invitation is for {self.invitation.email}. Sign up with that address, "
                "or ask your admin to invite the address you want to use.",
            )
        return cleaned

    def signup(self, request, user) -> None:
        """Required by allauth; the work happens in the adapter (see above)."""


# --- the team ----------------------------------------------------------------


def role_choices(actor: Membership) -> list[tuple[str, str]]:
    """The roles this member may hand out: owners any, admins all but owner."""
    return [(value, label) for value, label in Role.choices if value != Role.OWNER or actor.role == Role.OWNER]


class InviteForm(forms.Form):
    email = forms.EmailField(
        label="Email address",
        widget=forms.EmailInput(attrs={"autocomplete": "off"}),
        help_text="They get a mail with a link to join; it works for 7 days.",
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.USER)

    def __init__(self, *args, actor: Membership, **kwargs):
        super().__init__(*args, **kwargs)
        # The field accepts every role (a crafted "owner" from an admin is a
        # 403 in the action); the menu offers only what the actor may grant.
        self.fields["role"].widget.choices = role_choices(actor)
        self.fields["role"].help_text = format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><strong>{}</strong>: {}</li>",
                ((label, ROLE_HELP[value]) for value, label in role_choices(actor)),
            ),
        )

    def clean_email(self) -> str:
        return self.cleaned_data["email"].strip().lower()


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class AliasForm(forms.Form):
    address = forms.EmailField(
        label="Alias address",
        help_text="Another address whose mail this person may search, e.g. a shared mailbox.",
    )

    def clean_address(self) -> str:
        return self.cleaned_data["address"].strip().lower()


# --- domains -----------------------------------------------------------------

LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalize_domain(value: str) -> str:
    """`Contoso.COM.` → `contoso.com`; international names become A-labels."""
    name = value.strip().rstrip(".").lower()
    if "/" in name or "@" in name or ":" in name:
        raise forms.ValidationError("Enter the domain only, like example.com (no address, no https://).")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise forms.ValidationError(f"{value.strip()} is not a valid domain name.") from None
    labels = name.split(".")
    if (
        len(labels) < 2
        or len(name) > 253
        or not all(LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise forms.ValidationError(f"{value.strip()} is not a valid domain name, like example.com.")
    site = current_region().site
    if name == site or name.endswith(f".{site}"):
        raise forms.ValidationError(f"{name} belongs to Archiva, not to your organization.")
    return name


class DomainForm(forms.Form):
    name = forms.CharField(
        label="Domain",
        max_length=253,
        widget=forms.TextInput(attrs={"placeholder": "example.com", "autocomplete": "off", "spellcheck": "false"}),
        help_text="A domain your organization sends mail from, as in alice@example.com.",
    )

    def clean_name(self) -> str:
        return normalize_domain(self.cleaned_data["name"])
