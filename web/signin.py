"""Sign-in with Microsoft: the login page's routing, the callback, and `/settings/login/`.

The login page asks for the address first: one in a domain verified by a
tenant with "Sign in with Microsoft" on goes to Microsoft (the password, if
typed, is not used); everyone else signs in with their password.  Owners
keep a password form at `/accounts/login/?password=1`, so that a broken
Entra configuration can always be repaired; other members of such a tenant
are refused there.  The settings page is for owners and admins; every
change goes through `signin.actions` and is audited there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from allauth.account.forms import LoginForm as AllauthLoginForm
from allauth.account.utils import perform_login
from allauth.account.views import LoginView
from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from m365.graph import GraphError
from signin import access, actions, entra
from signin.entra import SigninRefused
from signin.models import RuleAttribute
from signin.rules import RULE_ROLES
from tenants.actions import ActionRefused
from tenants.models import Membership, Role, Tenant
from web.audit import client_ip
from web.csp import HEADER, policy_with
from web.roles import SignedInRequest, admin_required

FLOW_KEY = "archiva_microsoft_flow"
METHOD_KEY = "archiva_signin_method"  # "microsoft" after a Microsoft sign-in (the MFA policy skips those)
ROLE_CHOICES = [(role, Role(role).label) for role in RULE_ROLES]


# --- the login page -----------------------------------------------------------------------


class LoginForm(AllauthLoginForm):  # type: ignore[misc]  # allauth's forms carry no types
    """allauth's login form (ACCOUNT_FORMS["login"]), the address routed to Microsoft where its tenant says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.password_mode = self.request is not None and self.request.GET.get("password") == "1"
        self.microsoft_tenant: Tenant | None = None
        self.fields["password"].required = self.password_mode
        if not self.password_mode:
            self.fields["password"].help_text = "Leave it empty if your organization signs in with Microsoft."

    def clean(self) -> dict[str, Any]:
        email = str(self.cleaned_data.get("login") or "")
        if not self.password_mode and email and not self.errors:
            self.microsoft_tenant = access.tenant_signing_in(email)
            if self.microsoft_tenant is not None:
                return dict(self.cleaned_data)  # Microsoft checks who it is; no password here
        if not self.cleaned_data.get("password") and not self.errors:
            self.add_error("password", "Enter your password.")
            return dict(self.cleaned_data)
        cleaned = dict(super().clean())
        if self.user is not None and password_refused(self.user, email):
            raise forms.ValidationError(
                "Your organization signs in with Microsoft: leave the password empty. "
                "Password sign-in is kept for owners."
            )
        return cleaned

    def login(self, request: HttpRequest, redirect_url: str | None = None) -> HttpResponse:
        if self.microsoft_tenant is not None:
            return start(request, self.microsoft_tenant, str(self.cleaned_data["login"]), redirect_url)
        response: HttpResponse = super().login(request, redirect_url=redirect_url)
        return response


allauth_login = LoginView.as_view()


def login(request: HttpRequest) -> HttpResponse:
    """allauth's login page, its policy letting the form's redirect go on to Microsoft's sign-in.

    CSP's form-action also governs where a submitted form is redirected: without
    the login host the browser would stop at our 302 to Microsoft.
    """
    response: HttpResponse = allauth_login(request)
    split = urlsplit(settings.ARCHIVA_MS_LOGIN_URL)
    response[HEADER] = policy_with(form_action=["'self'", f"{split.scheme}://{split.netloc}"])
    return response


def password_refused(user: Any, email: str) -> bool:
    """Whether this account must sign in with Microsoft: its tenant signs the address in so, and it is no owner."""
    tenant = access.tenant_signing_in(email or user.email)
    if tenant is None:
        return False
    membership = user.memberships.filter(tenant=tenant).first()
    return membership is not None and membership.role != Role.OWNER


def start(request: HttpRequest, tenant: Tenant, email: str, next_url: str | None) -> HttpResponse:
    """Send the browser to Microsoft, the flow (state, nonce, PKCE verifier) kept in the session."""
    try:
        flow = entra.begin(tenant, email)
    except SigninRefused as refusal:
        actions.refuse(tenant, refusal, email=email, ip=client_ip(request))
        return refused_page(request, refusal)
    request.session[FLOW_KEY] = {"tenant": tenant.pk, "flow": flow, "next": next_url or "", "email": email}
    return redirect(flow["auth_uri"])


def refused_page(request: HttpRequest, refusal: SigninRefused) -> HttpResponse:
    return render(request, "signin/refused.html", {"message": refusal.message}, status=403)


@never_cache
@require_GET
def callback(request: HttpRequest) -> HttpResponse:
    """Where Microsoft sends the browser back: redeem the code, check who it is, sign them in."""
    pending = request.session.pop(FLOW_KEY, None)
    if not isinstance(pending, dict) or "flow" not in pending:
        return render(request, "signin/refused.html", {"message": entra.NOT_THIS_FLOW}, status=400)
    tenant = access.tenant_by_id(int(pending["tenant"]))
    ip = client_ip(request)
    who = None
    try:
        who = entra.finish(tenant, pending["flow"], request.GET.dict())
        actions.check_address(tenant, who)
        directory = directory_of(tenant, who)
        outcome = actions.sign_in(tenant, who, directory, ip=ip)
    except SigninRefused as refusal:
        actions.refuse(tenant, refusal, email=who.email if who else str(pending.get("email") or ""), ip=ip)
        return refused_page(request, refusal)
    next_url = str(pending.get("next") or "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}, require_https=False):
        next_url = ""
    response: HttpResponse = perform_login(request, outcome.user, redirect_url=next_url or None)
    request.session[METHOD_KEY] = "microsoft"
    return response


def directory_of(tenant: Tenant, who: entra.SignedIn) -> entra.DirectoryUser | None:
    """The person as Graph lists them; without rules a Graph failure only costs the aliases, with rules it refuses."""
    try:
        return entra.directory_user(entra.usable_connection(tenant), who.object_id)
    except GraphError as exc:
        if access.rules(tenant).exists():
            raise SigninRefused(
                "graph_failed",
                "Your groups could not be read from Microsoft Graph, so your role cannot be decided. "
                "Try again later, or ask an owner to check the Microsoft 365 connection's permissions.",
                error=exc.message,
            ) from None
        return None


# --- /settings/login/ -------------------------------------------------------------------------


class SigninForm(forms.Form):
    enabled = forms.BooleanField(label="Sign in with Microsoft", required=False)
    default_role = forms.ChoiceField(
        label="Role when no rule matches", choices=ROLE_CHOICES, initial=Role.USER, widget=forms.Select
    )


class RuleForm(forms.Form):
    attribute = forms.ChoiceField(label="Attribute", choices=RuleAttribute.choices)
    value = forms.CharField(label="Value", max_length=256, help_text="A group or directory role name, a department…")
    role = forms.ChoiceField(label="Role", choices=ROLE_CHOICES)


class LookupForm(forms.Form):
    email = forms.EmailField(label="Email or user principal name")


def page_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    tenant = membership.tenant
    config = access.signin_settings(tenant)
    try:
        entra.usable_connection(tenant)
        connection_ready = True
    except SigninRefused:
        connection_ready = False
    return {
        "membership": membership,
        "config": config,
        "form": extra.pop("form", None)
        or SigninForm(initial={"enabled": config.enabled, "default_role": config.default_role}),
        "rule_form": extra.pop("rule_form", None) or RuleForm(),
        "lookup_form": extra.pop("lookup_form", None) or LookupForm(),
        "rules": list(access.rules(tenant)),
        "callback_url": entra.callback_url(),
        "connection_ready": connection_ready,
        "domains": sorted(access.verified_domain_names(tenant)),
        **extra,
    }


@never_cache
@require_http_methods(["GET", "POST"])
@admin_required
def settings_page(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = SigninForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            actions.set_signin(
                membership,
                enabled=form.cleaned_data["enabled"],
                default_role=form.cleaned_data["default_role"],
                ip=client_ip(request),
            )
        except ActionRefused as refused:
            form.add_error(None, str(refused))
        else:
            messages.success(request, "Sign-in settings saved.")
            return redirect("signin-settings")
    if not form.is_bound:
        return render(request, "signin/settings.html", page_context(membership))
    return render(request, "signin/settings.html", page_context(membership, form=form), status=400)


@require_POST
@admin_required
def add_rule(request: SignedInRequest, membership: Membership) -> HttpResponse:
    form = RuleForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            actions.add_rule(membership, data["attribute"], data["value"], data["role"], ip=client_ip(request))
        except ActionRefused as refused:
            form.add_error(None, str(refused))
        else:
            messages.success(request, "Rule added.")
            return redirect(reverse("signin-settings") + "#rules")
    return render(request, "signin/settings.html", page_context(membership, rule_form=form), status=400)


@require_POST
@admin_required
def rule_action(request: SignedInRequest, membership: Membership, rule_id: int, action: str) -> HttpResponse:
    rule = access.rule(membership.tenant, rule_id)
    if action == "remove":
        actions.remove_rule(membership, rule, ip=client_ip(request))
        messages.success(request, "Rule removed.")
    elif action in ("up", "down"):
        actions.move_rule(membership, rule, up=action == "up", ip=client_ip(request))
    else:
        return HttpResponse("unknown action: remove, up or down", status=400, content_type="text/plain")
    return redirect(reverse("signin-settings") + "#rules")


@require_POST
@admin_required
def lookup(request: SignedInRequest, membership: Membership) -> HttpResponse:
    """The Lookup button: a user's groups, directory roles, department and job title from Graph."""
    form = LookupForm(request.POST)
    found = None
    if form.is_valid():
        try:
            found = entra.lookup(membership.tenant, form.cleaned_data["email"])
        except SigninRefused:
            form.add_error(None, "Set up the Microsoft 365 connection first (IDs and a certificate).")
        except GraphError as exc:
            form.add_error("email", exc.message)
    status = 200 if found is not None else 400
    context = page_context(membership, lookup_form=form, found=found)
    return render(request, "signin/settings.html", context, status=status)
