"""Sign-in with Microsoft Entra ID through the fake identity platform.

The login page sends an address of a tenant with sign-in on to Microsoft;
the code comes back, msal redeems it with the certificate (PKCE checked by
the fake), PyJWT verifies the ID token; the `tid` must be the configured
directory and the address in a verified domain, or the sign-in is refused
and audited.  The first sign-in creates the account and membership (proxy
addresses become aliases); rules give the role at every sign-in, never
demoting an owner.  Owners keep a password form at `?password=1`.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from signin import access
from signin.actions import add_rule, set_signin
from signin.rules import Attributes, Membership, role_for
from tenants.access import addresses_for
from tenants.actions import ActionRefused
from tenants.models import AuditEvent, Role, User
from tests.conftest import PASSWORD, membership_of
from tests.signin_support import at_microsoft, callback_path, entra_org

pytestmark = pytest.mark.django_db
Action = AuditEvent.Action


@pytest.fixture(autouse=True)
def _site_root(settings):
    settings.SITE_ROOT = "http://testserver"  # the callback URL Microsoft redirects the test client to


def start(client, email: str, **params) -> str:
    """The login page with an address and no password: the URL of Microsoft's sign-in page."""
    url = reverse("account_login")
    response = client.post(url, {"login": email, "password": ""}, **params)
    assert response.status_code == 302, response.content.decode()[:2000]
    return response["Location"]


def sign_in(client, fake, email: str, account: str | None = None):
    """Email on our login page, `account` picked at Microsoft (the same by default), back to the callback."""
    answer = at_microsoft(fake, start(client, email), account or email)
    return client.get(callback_path(answer))


def events(tenant, action):
    return list(AuditEvent.objects.filter(tenant=tenant, action=action).order_by("id"))


def test_first_sign_in_creates_the_account_membership_and_aliases(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    directory = str(connection.directory_id)
    kim = ms_fake.add_user(directory, "kim@contoso.com", "Kim Lee", aliases=["k.lee@contoso.com"], department="Legal")
    ms_fake.add_group(directory, "Archive Auditors", [kim])
    add_rule(membership_of(org.owner), "memberOf", "archive auditors", Role.AUDITOR)

    response = sign_in(client, ms_fake, "kim@contoso.com")

    assert response.status_code == 302 and response["Location"] == reverse("search")
    user = User.objects.get(email="kim@contoso.com")
    assert not user.has_usable_password()
    membership = membership_of(user)
    assert membership.tenant == org.tenant and membership.role == Role.AUDITOR
    assert "k.lee@contoso.com" in addresses_for(membership)
    assert client.session["archiva_signin_method"] == "microsoft"
    assert client.get(reverse("search")).status_code == 200
    joined = events(org.tenant, Action.MEMBER_JOINED)
    assert [(e.target, e.detail["role"]) for e in joined] == [("kim@contoso.com", "auditor")]
    assert ms_fake.id_tokens[-1]["tid"] == directory


def test_rules_decide_the_role_at_every_sign_in_and_changes_are_audited(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    directory = str(connection.directory_id)
    kim = ms_fake.add_user(directory, "kim@contoso.com")
    admins = ms_fake.add_directory_role(
        directory, "Global Administrator", [kim], template_id="62e90394-69f5-4237-9190-012177145e10"
    )
    add_rule(membership_of(org.owner), "memberOf", "Company Administrator", Role.ADMIN)
    add_rule(membership_of(org.owner), "department", "Legal", Role.AUDITOR)

    sign_in(client, ms_fake, "kim@contoso.com")
    assert membership_of(User.objects.get(email="kim@contoso.com")).role == Role.ADMIN

    admins.members.clear()
    ms_fake.user(kim).department = "legal"
    client.logout()
    sign_in(client, ms_fake, "kim@contoso.com")

    assert membership_of(User.objects.get(email="kim@contoso.com")).role == Role.AUDITOR
    [change] = events(org.tenant, Action.ROLE_CHANGED)
    assert change.target == "kim@contoso.com"
    assert change.detail["old"] == "admin" and change.detail["new"] == "auditor"
    assert change.detail["rule"] == "department = Legal → auditor"


def test_an_owner_is_never_demoted_by_a_rule(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "alice@contoso.com")

    response = sign_in(client, ms_fake, "alice@contoso.com")

    assert response.status_code == 302
    assert membership_of(org.owner).role == Role.OWNER
    assert events(org.tenant, Action.ROLE_CHANGED) == []


def test_an_admin_without_a_matching_rule_gets_the_default_role(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "bob@contoso.com")

    sign_in(client, ms_fake, "bob@contoso.com")

    assert membership_of(org.admin).role == Role.USER
    assert [e.detail["new"] for e in events(org.tenant, Action.ROLE_CHANGED)] == ["user"]


def test_a_token_of_another_directory_is_refused_and_audited(client, ms_fake, org):
    entra_org(ms_fake, org)
    ms_fake.add_tenant("5b1f7f3e-0000-4000-8000-00000000beef", "Fabrikam", domains=[("fabrikam.com", True)])
    ms_fake.add_user("5b1f7f3e-0000-4000-8000-00000000beef", "eve@contoso.com")
    ms_fake.cross_tenant_tokens = True

    response = sign_in(client, ms_fake, "kim@contoso.com", account="eve@contoso.com")

    assert response.status_code == 403
    assert "another Microsoft directory" in response.content.decode()
    assert not User.objects.filter(email="eve@contoso.com").exists()
    [refused] = events(org.tenant, Action.SIGNIN_REFUSED)
    assert refused.detail["reason"] == "other_directory"
    assert refused.detail["tid"] == "5b1f7f3e-0000-4000-8000-00000000beef"
    assert "_auth_user_id" not in client.session


def test_another_directorys_user_is_refused_by_microsoft_itself(client, ms_fake, org):
    entra_org(ms_fake, org)
    ms_fake.add_tenant("5b1f7f3e-0000-4000-8000-00000000beef", "Fabrikam", domains=[("fabrikam.com", True)])
    ms_fake.add_user("5b1f7f3e-0000-4000-8000-00000000beef", "eve@fabrikam.com")

    answer = at_microsoft(ms_fake, start(client, "kim@contoso.com"), "eve@fabrikam.com")

    assert answer.status_code == 400 and "AADSTS50020" in answer.text


def test_an_address_outside_the_verified_domains_is_refused_and_audited(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "kim@contoso.onmicrosoft.com")

    response = sign_in(client, ms_fake, "kim@contoso.com", account="kim@contoso.onmicrosoft.com")

    assert response.status_code == 403
    assert "not in one of your organization" in response.content.decode()
    assert not User.objects.filter(email="kim@contoso.onmicrosoft.com").exists()
    [refused] = events(org.tenant, Action.SIGNIN_REFUSED)
    assert refused.detail["reason"] == "domain_not_verified"
    assert refused.target == "kim@contoso.onmicrosoft.com"


def test_a_wrong_pkce_verifier_is_refused_by_the_token_endpoint(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "kim@contoso.com")
    answer = at_microsoft(ms_fake, start(client, "kim@contoso.com"), "kim@contoso.com")
    session = client.session
    session["archiva_microsoft_flow"]["flow"]["code_verifier"] = "x" * 43
    session.save()

    response = client.get(callback_path(answer))

    assert response.status_code == 403
    [refused] = events(org.tenant, Action.SIGNIN_REFUSED)
    assert refused.detail["reason"] == "token_refused" and refused.detail["error"] == "invalid_grant"
    assert "AADSTS501481" in response.content.decode()
    assert not User.objects.filter(email="kim@contoso.com").exists()


def test_an_id_token_with_a_forged_signature_is_refused(client, ms_fake, org):
    from cryptography.hazmat.primitives.asymmetric import rsa

    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "kim@contoso.com")
    ms_fake.id_token_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    response = sign_in(client, ms_fake, "kim@contoso.com")

    assert response.status_code == 403
    [refused] = events(org.tenant, Action.SIGNIN_REFUSED)
    assert refused.detail["reason"] == "invalid_id_token" and "Signature" in refused.detail["error"]
    assert not User.objects.filter(email="kim@contoso.com").exists()


def test_without_graph_permissions_rules_refuse_and_no_rules_still_sign_in(client, ms_fake, org):
    # The app may read the organization and its domains, not users or their groups.
    connection = entra_org(ms_fake, org, roles=frozenset({"Domain.Read.All", "Organization.Read.All"}))
    ms_fake.add_user(str(connection.directory_id), "kim@contoso.com", aliases=["k.lee@contoso.com"])

    assert sign_in(client, ms_fake, "kim@contoso.com").status_code == 302
    assert addresses_for(membership_of(User.objects.get(email="kim@contoso.com"))) == ["kim@contoso.com"]
    client.logout()
    add_rule(membership_of(org.owner), "department", "Legal", Role.AUDITOR)

    response = sign_in(client, ms_fake, "kim@contoso.com")

    assert response.status_code == 403 and "role cannot be decided" in response.content.decode()
    assert [e.detail["reason"] for e in events(org.tenant, Action.SIGNIN_REFUSED)] == ["graph_failed"]


def test_an_account_of_another_archiva_organization_is_not_taken_over(client, ms_fake, org):
    from tenants.actions import create_tenant
    from tests.conftest import make_user

    create_tenant("Zoe's own archive", make_user("zoe@contoso.com"))
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "zoe@contoso.com")

    response = sign_in(client, ms_fake, "zoe@contoso.com")

    assert response.status_code == 403
    assert membership_of(User.objects.get(email="zoe@contoso.com")).tenant.name == "Zoe's own archive"
    [refused] = events(org.tenant, Action.SIGNIN_REFUSED)
    assert refused.detail["reason"] == "account_of_another_organization"


def test_a_callback_cannot_be_replayed(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    ms_fake.add_user(str(connection.directory_id), "kim@contoso.com")
    answer = at_microsoft(ms_fake, start(client, "kim@contoso.com"), "kim@contoso.com")
    path = callback_path(answer)
    assert client.get(path).status_code == 302
    client.logout()

    replay = client.get(path)

    assert replay.status_code == 400
    assert "_auth_user_id" not in client.session


def test_an_address_of_a_tenant_without_microsoft_sign_in_asks_for_the_password(client, org):
    response = client.post(reverse("account_login"), {"login": "erin@contoso.com", "password": ""})

    assert response.status_code == 200
    assert "Enter your password." in response.content.decode()
    ok = client.post(reverse("account_login"), {"login": "erin@contoso.com", "password": PASSWORD})
    assert ok.status_code == 302


def test_the_password_form_stays_open_to_owners_only(client, ms_fake, org):
    entra_org(ms_fake, org)
    url = reverse("account_login") + "?password=1"

    refused = client.post(url, {"login": "bob@contoso.com", "password": PASSWORD})
    assert refused.status_code == 200
    assert "Password sign-in is kept for owners" in refused.content.decode()
    assert "_auth_user_id" not in client.session

    # Without ?password=1 even an owner is sent to Microsoft.
    assert start(client, "alice@contoso.com").startswith(ms_fake.url)

    ok = client.post(url, {"login": "alice@contoso.com", "password": PASSWORD})
    assert ok.status_code == 302 and ok["Location"] == reverse("status")


def test_the_settings_page_turns_sign_in_on_and_shows_the_callback(client, ms_fake, org):
    from tests.ms_support import connect

    client.force_login(org.owner)
    refused = client.post(reverse("signin-settings"), {"enabled": "on", "default_role": "user"})
    assert refused.status_code == 400
    assert "Set up the Microsoft 365 connection first" in refused.content.decode()
    assert not access.signin_settings(org.tenant).enabled

    connect(ms_fake, org.tenant)
    page = client.get(reverse("signin-settings"))
    assert "http://testserver/accounts/microsoft/callback" in page.content.decode()
    saved = client.post(reverse("signin-settings"), {"enabled": "on", "default_role": "auditor"})
    assert saved.status_code == 302
    assert 'name="enabled" id="id_enabled" checked' in client.get(reverse("signin-settings")).content.decode()
    config = access.signin_settings(org.tenant)
    assert config.enabled and config.default_role == Role.AUDITOR
    [event] = events(org.tenant, Action.SETTING_CHANGED)[-1:]
    assert event.target == "signin.microsoft" and event.detail["changed"]["enabled"] == {"old": False, "new": True}


def test_rules_are_added_ordered_and_removed_by_admins_only(client, ms_fake, org, outsider):
    client.force_login(org.admin)
    for value, role in (("Archive Admins", "admin"), ("Legal", "auditor")):
        response = client.post(reverse("signin-rule-add"), {"attribute": "memberOf", "value": value, "role": role})
        assert response.status_code == 302
    first, second = access.rules(org.tenant)
    client.post(reverse("signin-rule", args=[second.pk, "up"]))
    assert [r.value for r in access.rules(org.tenant)] == ["Legal", "Archive Admins"]
    owner_rule = client.post(reverse("signin-rule-add"), {"attribute": "memberOf", "value": "X", "role": "owner"})
    assert owner_rule.status_code == 400

    client.force_login(org.user)
    assert client.get(reverse("signin-settings")).status_code == 403
    client.force_login(outsider)
    assert client.post(reverse("signin-rule", args=[first.pk, "remove"])).status_code == 404
    client.force_login(org.admin)
    assert client.post(reverse("signin-rule", args=[first.pk, "remove"])).status_code == 302
    assert [r.value for r in access.rules(org.tenant)] == ["Legal"]
    assert len(events(org.tenant, Action.SETTING_CHANGED)) == 4


def test_lookup_lists_groups_roles_department_and_job_title(client, ms_fake, org):
    connection = entra_org(ms_fake, org)
    directory = str(connection.directory_id)
    kim = ms_fake.add_user(directory, "kim@contoso.com", "Kim Lee", department="Legal", job_title="Counsel")
    ms_fake.add_group(directory, "Archive Auditors", [kim])
    ms_fake.add_directory_role(directory, "Compliance Administrator", [kim])
    client.force_login(org.admin)

    response = client.post(reverse("signin-lookup"), {"email": "kim@contoso.com"})

    body = response.content.decode()
    assert response.status_code == 200
    for expected in ("Archive Auditors", "Compliance Administrator", "Legal", "Counsel", "Kim Lee"):
        assert expected in body
    missing = client.post(reverse("signin-lookup"), {"email": "nobody@contoso.com"})
    assert missing.status_code == 400 and "does not exist" in missing.content.decode()


def test_set_signin_refuses_owner_as_default_role(ms_fake, org):
    entra_org(ms_fake, org)
    with pytest.raises(ActionRefused):
        set_signin(membership_of(org.owner), enabled=True, default_role=Role.OWNER)


def test_rule_matching_is_ordered_and_knows_the_legacy_role_name():
    class Rule:
        def __init__(self, attribute, value, role):
            self.attribute, self.value, self.role = attribute, value, role

    rules = [Rule("jobTitle", "Counsel", "auditor"), Rule("memberOf", "Company Administrator", "admin")]
    global_admin = Membership("directoryRole", "r1", "Global Administrator", "62e90394-69f5-4237-9190-012177145e10")
    both = Attributes(member_of=[global_admin], job_title="  counsel ")
    assert role_for(rules, both, "user")[0] == "auditor"
    assert role_for(rules, Attributes(member_of=[global_admin]), "user")[0] == "admin"
    assert role_for(rules, Attributes(department="Legal"), "user") == ("user", None)
