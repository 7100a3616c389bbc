"""Team (`/team/`): admins invite people with a role, change roles, remove
members and assign aliases; a tenant always keeps an owner."""

from __future__ import annotations

import email
import re
from datetime import timedelta
from email import policy

import pytest
from allauth.account.models import EmailAddress
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from tenants.access import addresses_for
from tenants.actions import ActionRefused, add_alias, invite_member
from tenants.models import Alias, Invitation, Membership, Role, Tenant, User
from tenants.tokens import hash_secret
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

# Links in mail are on SITE_ROOT, whatever Host the request named.
JOIN_RE = re.compile(re.escape(settings.SITE_ROOT) + r"(/team/join/([A-Za-z0-9_-]+)/)")


@pytest.fixture
def outbox(settings, tmp_path):
    """Outgoing mail goes to .eml files in a folder of this test."""
    settings.EMAIL_BACKEND = "web.mail.OutboxBackend"
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"
    return settings.ARCHIVA_OUTBOX_DIR


def mails(outbox) -> list[email.message.EmailMessage]:
    """The mails sent, oldest first (file names have one-second resolution: use the write time)."""
    paths = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]


def join_path(message) -> str:
    return JOIN_RE.search(message.get_body(preferencelist=("plain",)).get_content()).group(1)


def membership(user) -> Membership:
    return Membership.objects.get(user=user)


def unused_invitations():
    """Invitations not used yet (the fixture's members accepted theirs)."""
    return Invitation.objects.filter(accepted_at__isnull=True)


def invite(client, address="frank@contoso.com", role="user"):
    return client.post(reverse("team"), {"email": address, "role": role})


def sign_up(client, address, organization=None):
    data = {"email": address, "password1": PASSWORD, "password2": PASSWORD}
    if organization:
        data["organization"] = organization
    return client.post(reverse("account_signup"), data)


# --- inviting -----------------------------------------------------------------------


def test_an_admin_invites_by_email_and_role_and_the_mail_carries_a_join_link(client, org, outbox):
    client.force_login(org.admin)
    response = invite(client, "Frank@Contoso.com", "auditor")
    assert response.status_code == 302

    invitation = unused_invitations().get()
    assert (invitation.tenant, invitation.email, invitation.role) == (org.tenant, "frank@contoso.com", "auditor")
    assert invitation.invited_by == org.admin
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)

    (message,) = mails(outbox)
    assert message["To"] == "frank@contoso.com"
    assert "bob@contoso.com invited you to Contoso" in message["Subject"]
    path = join_path(message)
    secret = path.split("/")[-2]
    assert invitation.token_hash == hash_secret(secret) != secret  # only the hash is kept

    html = client.get(reverse("team")).content.decode()
    assert "Invitation sent to frank@contoso.com." in html
    pending = re.search(r'id="pending-invitations">(.*?)</table>', html, re.S).group(1)
    assert "frank@contoso.com" in pending and "Auditor" in pending


def test_the_invite_form_has_email_and_role_and_offers_owner_to_owners_only(client, org):
    client.force_login(org.admin)
    html = client.get(reverse("team")).content.decode()
    form = re.search(r'<form method="post" action="/team/" .*?</form>', html, re.S).group(0)
    assert set(re.findall(r'name="(\w+)"', form)) == {"csrfmiddlewaretoken", "email", "role"}
    assert re.findall(r'<option value="(\w+)"', form) == ["admin", "auditor", "user"]
    assert '<label for="id_email">' in form and '<label for="id_role">' in form

    client.force_login(org.owner)
    html = client.get(reverse("team")).content.decode()
    form = re.search(r'<form method="post" action="/team/" .*?</form>', html, re.S).group(0)
    assert re.findall(r'<option value="(\w+)"', form) == ["owner", "admin", "auditor", "user"]


def test_an_admin_who_tries_to_invite_an_owner_gets_403(client, org, outbox):
    client.force_login(org.admin)
    assert invite(client, role="owner").status_code == 403
    assert not unused_invitations().exists()
    assert not mails(outbox)


def test_an_owner_may_invite_an_owner(client, org, outbox):
    client.force_login(org.owner)
    invite(client, role="owner")
    assert unused_invitations().get().role == Role.OWNER


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"email": "not an address", "role": "user"}, "email", "Enter a valid email address."),
        ({"email": "erin@contoso.com", "role": "user"}, "email", "erin@contoso.com is already a member of Contoso."),
        ({"email": "frank@contoso.com", "role": "boss"}, "role", "Select a valid choice."),
    ],
)
def test_a_bad_invitation_gets_the_form_back_with_the_reason_beside_the_field(client, org, outbox, data, field, reason):
    client.force_login(org.owner)
    response = client.post(reverse("team"), data)
    assert response.status_code == 200
    html = response.content.decode()
    errors = re.search(rf'<ul class="field__errors" id="id_{field}_error">(.*?)</ul>', html, re.S).group(1)
    assert reason in errors
    assert not unused_invitations().exists()
    assert not mails(outbox)


def test_inviting_the_same_address_again_replaces_the_first_link(client, org, outbox):
    client.force_login(org.admin)
    invite(client)
    invite(client)
    first, second = mails(outbox)
    assert unused_invitations().count() == 1
    client.logout()
    assert client.get(join_path(first)).status_code == 404
    assert client.get(join_path(second)).status_code == 200


def test_resend_and_revoke(client, org, outbox):
    client.force_login(org.admin)
    invite(client)
    invitation = unused_invitations().get()
    client.post(reverse("team-invitation-resend", args=[invitation.pk]))
    first, second = mails(outbox)
    client.post(reverse("team-invitation-revoke", args=[unused_invitations().get().pk]))
    assert not unused_invitations().exists()
    client.logout()
    for message in (first, second):
        response = client.get(join_path(message))
        assert response.status_code == 404
        assert "This invitation is not valid" in response.content.decode()


# --- joining --------------------------------------------------------------------------


def test_an_invited_person_signs_up_and_joins_the_inviting_tenant(client, org, outbox):
    """The link leads to sign-up; the new account joins Contoso instead of creating a tenant."""
    client.force_login(org.admin)
    invite(client, "frank@contoso.com", "user")
    client.logout()

    page = client.get(join_path(mails(outbox)[0])).content.decode()
    assert "Join Contoso" in page
    assert "bob@contoso.com invited <strong>frank@contoso.com</strong>" in page
    signup_page = client.get(reverse("account_signup")).content.decode()
    assert "Join Contoso" in signup_page
    assert 'name="organization"' not in signup_page
    assert 'value="frank@contoso.com"' in signup_page

    response = sign_up(client, "frank@contoso.com")
    # The link proved the address: no second verification mail, straight in (to search: a plain user).
    assert response.status_code == 302
    assert response.url == reverse("search")
    assert len(mails(outbox)) == 1
    frank = User.objects.get(email="frank@contoso.com")
    assert membership(frank).tenant == org.tenant
    assert membership(frank).role == Role.USER
    assert Tenant.objects.count() == 1
    assert EmailAddress.objects.get(user=frank).verified
    assert Invitation.objects.get(email="frank@contoso.com").accepted_by == frank
    assert client.get(reverse("status")).status_code == 200


def test_signing_up_from_an_invitation_with_another_address_is_refused(client, org, outbox):
    _, secret = invite_member(membership(org.owner), "frank@contoso.com", Role.USER)
    client.get(reverse("team-join", args=[secret]))
    response = sign_up(client, "mallory@example.net")
    assert response.status_code == 200
    errors = re.search(r'id="id_email_error">(.*?)</ul>', response.content.decode(), re.S).group(1)
    assert "This invitation is for frank@contoso.com." in errors
    assert not User.objects.filter(email="mallory@example.net").exists()


def test_a_plain_sign_up_still_creates_its_own_tenant_after_an_expired_invitation(client, org, outbox):
    invitation, secret = invite_member(membership(org.owner), "frank@contoso.com", Role.USER)
    client.get(reverse("team-join", args=[secret]))
    # Time-shift: a week passes (invite_member takes no clock), so the link has expired.
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert 'name="organization"' in client.get(reverse("account_signup")).content.decode()
    response = sign_up(client, "frank@contoso.com", organization="Frank's Shop")
    assert response.status_code == 302
    assert membership(User.objects.get(email="frank@contoso.com")).tenant.name == "Frank's Shop"


def test_someone_with_an_account_signs_in_and_accepts(client, org):
    frank = make_user("frank@contoso.com")  # an account of no tenant (e.g. removed earlier)
    _, secret = invite_member(membership(org.admin), "frank@contoso.com", Role.AUDITOR)
    link = reverse("team-join", args=[secret])

    page = client.get(link).content.decode()
    assert "Sign in to accept" in page
    assert f"{reverse('account_login')}?next={link}" in page

    response = client.post(reverse("account_login"), {"login": "frank@contoso.com", "password": PASSWORD, "next": link})
    assert response.url == link
    assert 'id="accept-invitation"' in client.get(link).content.decode()
    response = client.post(link)
    assert response.status_code == 302
    assert response.url == reverse("search")  # auditors start on search
    assert membership(frank).role == Role.AUDITOR
    assert client.get(link).status_code == 404  # used up


def test_a_member_of_another_tenant_cannot_accept(client, org, outsider):
    _, secret = invite_member(membership(org.owner), "charlie@fabrikam.com", Role.ADMIN)
    client.force_login(outsider)
    response = client.post(reverse("team-join", args=[secret]))
    assert response.status_code == 409
    assert "already belongs to Fabrikam" in response.content.decode()
    assert list(Membership.objects.filter(user=outsider).values_list("tenant__name", flat=True)) == ["Fabrikam"]


def test_signed_in_with_another_address_the_invitation_cannot_be_accepted(client, org):
    stranger = make_user("mallory@example.net")
    _, secret = invite_member(membership(org.owner), "frank@contoso.com", Role.USER)
    client.force_login(stranger)
    link = reverse("team-join", args=[secret])
    assert "but this invitation is for frank@contoso.com" in client.get(link).content.decode()
    client.post(link)
    assert not Membership.objects.filter(user=stranger).exists()


def test_an_expired_or_unknown_link_says_so(client, org):
    invitation, secret = invite_member(membership(org.owner), "frank@contoso.com", Role.USER)
    # Time-shift: a week passes (invite_member takes no clock), so the link has expired.
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    for link in (reverse("team-join", args=[secret]), reverse("team-join", args=["made-up"])):
        response = client.get(link)
        assert response.status_code == 404
        assert "This invitation is not valid" in response.content.decode()


# --- roles and members ---------------------------------------------------------------


def change_role(client, user, role):
    return client.post(reverse("team-role", args=[membership(user).pk]), {"role": role})


def test_an_admin_changes_a_users_role(client, org):
    client.force_login(org.admin)
    response = change_role(client, org.user, "auditor")
    assert response.status_code == 302
    assert membership(org.user).role == Role.AUDITOR
    assert "erin@contoso.com is now auditor." in client.get(reverse("team")).content.decode()


def test_only_owners_make_change_or_remove_owners(client, org):
    client.force_login(org.admin)
    assert change_role(client, org.user, "owner").status_code == 403
    assert change_role(client, org.owner, "user").status_code == 403
    assert client.post(reverse("team-remove", args=[membership(org.owner).pk])).status_code == 403
    assert membership(org.user).role == Role.USER
    assert membership(org.owner).role == Role.OWNER

    client.force_login(org.owner)
    change_role(client, org.admin, "owner")
    assert membership(org.admin).role == Role.OWNER


def test_the_last_owner_can_be_neither_demoted_nor_removed(client, org):
    client.force_login(org.owner)
    change_role(client, org.owner, "admin")
    assert membership(org.owner).role == Role.OWNER
    html = client.get(reverse("team")).content.decode()
    assert "alice@contoso.com is the last owner. Make someone else an owner first." in html

    client.post(reverse("team-remove", args=[membership(org.owner).pk]))
    assert membership(org.owner).role == Role.OWNER
    assert "alice@contoso.com is the last owner and cannot be removed." in client.get(reverse("team")).content.decode()


def test_with_a_second_owner_the_first_may_step_down_and_leave(client, org):
    client.force_login(org.owner)
    change_role(client, org.admin, "owner")
    change_role(client, org.owner, "admin")
    assert membership(org.owner).role == Role.ADMIN
    client.force_login(org.admin)  # bob, now the only owner
    response = client.post(reverse("team-remove", args=[membership(org.owner).pk]))
    assert response.status_code == 302
    assert not Membership.objects.filter(user=org.owner).exists()


def test_a_removed_member_loses_access_but_keeps_the_account(client, org):
    client.force_login(org.admin)
    client.post(reverse("team-remove", args=[membership(org.user).pk]))
    assert not Membership.objects.filter(user=org.user).exists()
    assert User.objects.filter(pk=org.user.pk).exists()
    client.force_login(org.user)
    assert client.get(reverse("status")).status_code == 404


def test_the_team_page_lists_members_roles_and_searchable_addresses(client, org):
    add_alias(membership(org.owner), membership(org.user), "sales@contoso.com")
    client.force_login(org.owner)
    html = client.get(reverse("team")).content.decode()
    members = re.search(r'<ul class="members" id="members">(.*?)</section>', html, re.S).group(1)
    order = [m for m in re.findall(r'class="member__email">([^<]+)<', members)]
    assert order == ["alice@contoso.com", "bob@contoso.com", "dave@contoso.com", "erin@contoso.com"]
    erin = members[members.index("erin@contoso.com") :]
    assert '<li class="chip">erin@contoso.com</li>' in erin
    assert "sales@contoso.com" in erin


# --- aliases ---------------------------------------------------------------------------


def test_an_admin_assigns_and_removes_an_alias(client, org):
    client.force_login(org.admin)
    erin = membership(org.user)
    response = client.post(reverse("team-alias-add", args=[erin.pk]), {"address": "Sales@Contoso.com"})
    assert response.status_code == 302
    assert addresses_for(erin) == ["erin@contoso.com", "sales@contoso.com"]
    alias = Alias.objects.get()
    client.post(reverse("team-alias-remove", args=[alias.pk]))
    assert addresses_for(erin) == ["erin@contoso.com"]


def test_an_alias_is_unique_within_a_tenant_but_not_across_tenants(client, org, outsider):
    add_alias(membership(org.owner), membership(org.user), "sales@contoso.com")
    with pytest.raises(ActionRefused, match="already an alias"):
        add_alias(membership(org.owner), membership(org.auditor), "sales@contoso.com")
    add_alias(membership(outsider), membership(outsider), "sales@contoso.com")
    assert Alias.objects.count() == 2


def test_a_malformed_alias_is_refused_with_the_reason(client, org):
    client.force_login(org.admin)
    html = client.post(
        reverse("team-alias-add", args=[membership(org.user).pk]), {"address": "nope"}, follow=True
    ).content.decode()
    assert "Alias for erin@contoso.com: Enter a valid email address." in html
    assert not Alias.objects.exists()


def add_email_address(client, outbox, user, address: str, confirm: bool) -> None:
    """Add an address on allauth's e-mail page as its owner does; confirm it by the mailed link."""
    client.force_login(user)
    sent = len(mails(outbox))
    assert client.post(reverse("account_email"), {"email": address, "action_add": ""}).status_code == 302
    if confirm:
        body = mails(outbox)[sent].get_body(preferencelist=("plain",)).get_content()
        key = re.search(r"/accounts/confirm-email/([^/\s]+)/", body).group(1)
        assert client.post(reverse("account_confirm_email", args=[key])).status_code == 302


def test_addresses_for_counts_only_verified_addresses_and_aliases_lower_cased(client, org, outbox):
    erin = membership(org.user)
    add_email_address(client, outbox, org.user, "erin.unverified@contoso.com", confirm=False)
    add_email_address(client, outbox, org.user, "Erin.Private@Example.NET", confirm=True)
    add_alias(membership(org.owner), erin, "Shared@Contoso.com")
    assert addresses_for(erin) == ["erin.private@example.net", "erin@contoso.com", "shared@contoso.com"]
    assert addresses_for(membership(org.auditor)) == ["dave@contoso.com"]


# --- who may --------------------------------------------------------------------------


def team_posts(org):
    erin = membership(org.user)
    alias = add_alias(membership(org.owner), erin, "sales@contoso.com")
    invitation, _ = invite_member(membership(org.owner), "frank@contoso.com", Role.USER)
    return [
        (reverse("team"), {"email": "x@contoso.com", "role": "user"}),
        (reverse("team-role", args=[erin.pk]), {"role": "admin"}),
        (reverse("team-remove", args=[erin.pk]), {}),
        (reverse("team-alias-add", args=[erin.pk]), {"address": "y@contoso.com"}),
        (reverse("team-alias-remove", args=[alias.pk]), {}),
        (reverse("team-invitation-resend", args=[invitation.pk]), {}),
        (reverse("team-invitation-revoke", args=[invitation.pk]), {}),
    ]


def unchanged(org):
    assert membership(org.user).role == Role.USER
    assert list(Alias.objects.values_list("address", flat=True)) == ["sales@contoso.com"]
    assert list(unused_invitations().values_list("email", flat=True)) == ["frank@contoso.com"]


@pytest.mark.parametrize("role", ["auditor", "user"])
def test_auditors_and_users_get_403_on_the_team_pages(client, org, outbox, role):
    posts = team_posts(org)
    client.force_login(getattr(org, role))
    assert client.get(reverse("team")).status_code == 403
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    unchanged(org)
    assert not mails(outbox)


def test_the_outsider_gets_404_for_everything_of_contoso(client, org, outsider, outbox):
    posts = team_posts(org)
    client.force_login(outsider)
    html = client.get(reverse("team")).content.decode()
    assert "charlie@fabrikam.com" in html
    assert "contoso" not in html.lower()
    for url, data in posts[1:]:
        assert client.post(url, data).status_code == 404, url
    unchanged(org)
    assert not mails(outbox)


def test_visitors_are_sent_to_sign_in(client, org):
    response = client.get(reverse("team"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_admins_see_team_and_domains_in_the_navigation_and_others_do_not(client, org):
    client.force_login(org.admin)
    html = client.get(reverse("status")).content.decode()
    assert 'href="/team/"' in html and 'href="/domains/"' in html
    client.force_login(org.user)
    html = client.get(reverse("status")).content.decode()
    assert 'href="/team/"' not in html


# --- several at once, re-inviting, leaving (issue 23, point 6) ---------------------------------------------


def test_an_admin_invites_several_people_from_a_textarea_with_roles(client, org, outbox):
    client.force_login(org.admin)
    text = "email,role\nFrank@Contoso.com\ngina@contoso.com, Auditor\nhal@contoso.com;admin\nfrank@contoso.com\n"
    response = client.post(reverse("team-invite-many"), {"addresses": text, "role": "user"}, follow=True)
    assert response.status_code == 200
    got = {i.email: i.role for i in Invitation.objects.filter(tenant=org.tenant, accepted_at__isnull=True)}
    assert got == {"frank@contoso.com": "user", "gina@contoso.com": "auditor", "hal@contoso.com": "admin"}
    assert sorted(m["To"] for m in mails(outbox)) == ["frank@contoso.com", "gina@contoso.com", "hal@contoso.com"]
    html = response.content.decode()
    assert "Invitation sent to gina@contoso.com." in html


def test_a_csv_file_of_invitations_is_read_and_bad_lines_are_named(client, org, outbox):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(org.admin)
    upload = SimpleUploadedFile("team.csv", b"\xef\xbb\xbfemail,role\r\nivy@contoso.com,auditor\r\n", "text/csv")
    client.post(reverse("team-invite-many"), {"csv_file": upload, "role": "user"})
    assert Invitation.objects.get(tenant=org.tenant, email="ivy@contoso.com").role == "auditor"
    bad = client.post(
        reverse("team-invite-many"), {"addresses": "not-an-address\njo@contoso.com, boss", "role": "user"}
    )
    assert bad.status_code == 400
    html = bad.content.decode()
    assert "Line 1: “not-an-address” is not an email address." in html
    assert "Line 2: “boss” is not a role; use user, auditor, admin or owner." in html
    assert not Invitation.objects.filter(tenant=org.tenant, email="jo@contoso.com").exists()  # nothing half-sent
    # An admin's batch cannot make owners: refused per line, the others still go out.
    client.post(reverse("team-invite-many"), {"addresses": "kim@contoso.com, owner\nlee@contoso.com", "role": "user"})
    assert not Invitation.objects.filter(tenant=org.tenant, email="kim@contoso.com").exists()
    assert Invitation.objects.filter(tenant=org.tenant, email="lee@contoso.com").exists()


def test_reinviting_says_the_earlier_link_stops_working(client, org, outbox):
    client.force_login(org.admin)
    invite(client, "frank@contoso.com", "user")
    html = client.post(reverse("team"), {"email": "frank@contoso.com", "role": "user"}, follow=True).content.decode()
    assert "Invitation sent again to frank@contoso.com: the link in the earlier mail no longer works." in html
    assert "the link in the earlier mail stops working" in client.get(reverse("team")).content.decode()


def test_your_own_row_says_leave(client, org):
    client.force_login(org.admin)
    html = client.get(reverse("team")).content.decode()
    assert html.count('id="leave-team">Leave</button>') == 1
    bob = Membership.objects.get(user=org.admin, tenant=org.tenant)
    response = client.post(reverse("team-remove", args=[bob.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert not Membership.objects.filter(pk=bob.pk).exists()
