"""Forms of the portal: sign-up's own field, the team, domains."""

from __future__ import annotations

import re
from typing import Any

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


MAX_BATCH_INVITES = 200


def parse_invitations(text: str, default_role: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Addresses to invite, one a line: `address` or CSV `address,role` (a
    header line `email,role` is skipped); roles by value or label, any case.
    Returns (address, role) pairs in order, and one error per bad line."""
    import csv

    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    roles = {value: value for value in Role.values} | {str(label).lower(): value for value, label in Role.choices}
    found: list[tuple[str, str]] = []
    errors: list[str] = []
    seen: set[str] = set()
    lines = [line for line in text.replace(";", ",").splitlines() if line.strip()]
    if len(lines) > MAX_BATCH_INVITES:
        return [], [f"At most {MAX_BATCH_INVITES} addresses at once; this has {len(lines)}."]
    for number, row in enumerate(csv.reader(lines), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not cells[0]:
            continue
        if number == 1 and cells[0].lower() in ("email", "address", "e-mail"):
            continue
        address = cells[0].lower()
        role_text = cells[1].lower() if len(cells) > 1 and cells[1] else ""
        try:
            validate_email(address)
        except ValidationError:
            errors.append(f"Line {number}: “{cells[0][:100]}” is not an email address.")
            continue
        if role_text and role_text not in roles:
            errors.append(f"Line {number}: “{cells[1][:50]}” is not a role; use user, auditor, admin or owner.")
            continue
        if address in seen:
            continue
        seen.add(address)
        found.append((address, roles[role_text] if role_text else default_role))
    return found, errors


class BatchInviteForm(forms.Form):
    addresses = forms.CharField(
        required=False,
        label="Addresses",
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "anna@example.com\nben@example.com, auditor"}),
        help_text="One a line; add a role after a comma (user, auditor, admin, owner), else the role below.",
    )
    csv_file = forms.FileField(
        required=False, label="Or a CSV file", help_text="Columns: email, role (a header line is fine)."
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.USER, label="Role for lines without one")

    def __init__(self, *args, actor: Membership, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].widget.choices = role_choices(actor)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        text = data.get("addresses") or ""
        upload = data.get("csv_file")
        if upload is not None:
            if upload.size > 200_000:
                raise forms.ValidationError("The CSV file is larger than 200 KB; split it.")
            try:
                text += "\n" + upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise forms.ValidationError("The CSV file must be UTF-8 text.") from None
        found, errors = parse_invitations(text, data.get("role") or Role.USER)
        if errors:
            raise forms.ValidationError(errors)
        if not found:
            raise forms.ValidationError("Give at least one address, in the box or in a CSV file.")
        data["invitations"] = found
        return data


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
