"""Every admin action is an audit event, with actor, target, IP and time;
admins and auditors read them on `/audit/`, plain users get 403, and
charlie, the outsider, sees only his own tenant's log.  The IP is the
request's; X-Forwarded-For counts only behind our proxy (ARCHIVA_BEHIND_PROXY)."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tenants.actions import add_domain, invite_member
from tenants.models import Alias, AuditEvent, Domain, Invitation, JournalToken, Membership, Role
from tests.conftest import make_user

Action = AuditEvent.Action
ADMIN_IP = "198.51.100.23"


def membership(user) -> Membership:
    return Membership.objects.get(user=user)


def last_event(org) -> AuditEvent:
    return AuditEvent.objects.filter(tenant=org.tenant).order_by("-id").first()


def post_as(client, user, url, data=None, **headers):
    client.force_login(user)
    return client.post(url, data or {}, REMOTE_ADDR=ADMIN_IP, **headers)


def assert_event(org, action, actor, target, **detail):
    event = last_event(org)
    assert (event.action, event.user, event.actor_email, event.target, event.ip) == (
        action, actor, actor.email, target, ADMIN_IP,
    )  # fmt: skip
    assert event.created_at is not None
    for key, value in detail.items():
        assert event.detail[key] == value


@pytest.fixture
def mailbox(settings, tmp_path):
    settings.EMAIL_BACKEND = "web.mail.OutboxBackend"
    settings.ARCHIVA_OUTBOX_DIR = tmp_path / "outbox"


# --- each admin action ---------------------------------------------------------------------


def test_sending_and_revoking_an_invitation_are_audited(client, org, mailbox):
    post_as(client, org.admin, reverse("team"), {"email": "frank@contoso.com", "role": "auditor"})
    assert_event(org, Action.INVITATION_SENT, org.admin, "frank@contoso.com", role="auditor")
    invitation = Invitation.objects.get(tenant=org.tenant, email="frank@contoso.com", accepted_at__isnull=True)
    post_as(client, org.admin, reverse("team-invitation-revoke", args=[invitation.pk]))
    assert_event(org, Action.INVITATION_REVOKED, org.admin, "frank@contoso.com")


def test_accepting_an_invitation_is_audited_as_the_new_member(client, org):
    frank = make_user("frank@contoso.com")
    _, secret = invite_member(membership(org.admin), "frank@contoso.com", Role.USER)
    post_as(client, frank, reverse("team-join", args=[secret]))
    assert_event(org, Action.INVITATION_ACCEPTED, frank, "frank@contoso.com", role="user")


def test_a_role_change_and_a_removal_are_audited(client, org):
    post_as(client, org.admin, reverse("team-role", args=[membership(org.user).pk]), {"role": "auditor"})
    assert_event(org, Action.ROLE_CHANGED, org.admin, org.user.email, old="user", new="auditor")
    post_as(client, org.admin, reverse("team-remove", args=[membership(org.auditor).pk]))
    assert_event(org, Action.MEMBER_REMOVED, org.admin, org.auditor.email, role="auditor")


def test_adding_and_removing_an_alias_are_audited(client, org):
    post_as(
        client, org.admin, reverse("team-alias-add", args=[membership(org.user).pk]), {"address": "sales@contoso.com"}
    )
    assert_event(org, Action.ALIAS_ADDED, org.admin, org.user.email, alias="sales@contoso.com")
    alias = Alias.objects.get(tenant=org.tenant)
    post_as(client, org.owner, reverse("team-alias-remove", args=[alias.pk]))
    assert_event(org, Action.ALIAS_REMOVED, org.owner, org.user.email, alias="sales@contoso.com")


def test_adding_verifying_and_removing_a_domain_are_audited(client, org, dns_server):
    post_as(client, org.admin, reverse("domains"), {"name": "contoso.com"})
    assert_event(org, Action.DOMAIN_ADDED, org.admin, "contoso.com")
    domain = Domain.objects.get(tenant=org.tenant)
    dns_server.add_txt(domain.txt_name, domain.txt_value)
    post_as(client, org.admin, reverse("domain-verify", args=[domain.pk]))
    assert_event(org, Action.DOMAIN_VERIFIED, org.admin, "contoso.com")
    post_as(client, org.owner, reverse("domain-remove", args=[domain.pk]))
    assert_event(org, Action.DOMAIN_REMOVED, org.owner, "contoso.com", was_verified=True)


def test_rotating_the_journal_address_is_audited_without_the_address(client, org):
    post_as(client, org.admin, reverse("rotate-token"))
    assert_event(org, Action.JOURNAL_TOKEN_ROTATED, org.admin, "journal address", grace_days=7)
    event = last_event(org)
    assert not any(t.token in f"{event.target} {event.detail}" for t in JournalToken.objects.filter(tenant=org.tenant))


def test_creating_and_revoking_an_api_token_are_audited(client, org):
    post_as(client, org.owner, reverse("tokens"), {"name": "export script", "scope": "admin"})
    assert_event(org, Action.TOKEN_CREATED, org.owner, "export script")
    token_id = last_event(org).detail["token"]
    post_as(client, org.admin, reverse("token-revoke", args=[token_id]))
    assert_event(org, Action.TOKEN_REVOKED, org.admin, "export script")


def test_changing_an_organization_setting_is_audited(client, org):
    post_as(client, org.admin, reverse("set-organization"), {"m365_organization": "contoso.onmicrosoft.com"})
    assert_event(org, Action.SETTING_CHANGED, org.admin, "m365_organization", old="", new="contoso.onmicrosoft.com")


def test_a_refused_action_writes_no_event(client, org):
    before = AuditEvent.objects.count()
    post_as(client, org.admin, reverse("team-role", args=[membership(org.owner).pk]), {"role": "user"})  # 403
    post_as(client, org.user, reverse("rotate-token"))  # 403
    assert AuditEvent.objects.count() == before


# --- the IP --------------------------------------------------------------------------------


def test_x_forwarded_for_is_ignored_unless_behind_our_proxy(client, org, settings):
    settings.ARCHIVA_BEHIND_PROXY = False
    post_as(client, org.admin, reverse("rotate-token"), HTTP_X_FORWARDED_FOR="192.0.2.66")
    assert last_event(org).ip == ADMIN_IP

    settings.ARCHIVA_BEHIND_PROXY = True
    post_as(client, org.admin, reverse("rotate-token"), HTTP_X_FORWARDED_FOR="192.0.2.66, 203.0.113.80")
    assert last_event(org).ip == "203.0.113.80"  # the peer our proxy saw; the rest is the client's say-so


# --- reading the log -----------------------------------------------------------------------


def audit_rows(client, user) -> str:
    client.force_login(user)
    response = client.get(reverse("audit"))
    assert response.status_code == 200
    return re.search(r'id="audit-events">.*?<tbody>(.*?)</tbody>', response.content.decode(), re.S).group(1)


@pytest.mark.parametrize("role", ["owner", "admin", "auditor"])
def test_admins_and_auditors_read_the_admin_actions_on_the_audit_page(client, org, role):
    post_as(client, org.admin, reverse("team-role", args=[membership(org.user).pk]), {"role": "auditor"})
    rows = audit_rows(client, getattr(org, role))
    assert "role changed" in rows and org.admin.email in rows and org.user.email in rows and ADMIN_IP in rows


def test_plain_users_cannot_read_the_audit_log(client, org):
    client.force_login(org.user)
    assert client.get(reverse("audit")).status_code == 403


def test_the_outsider_reads_only_his_own_tenants_admin_actions(client, org, outsider):
    add_domain(membership(org.admin), "contoso.com", ip=ADMIN_IP)
    add_domain(membership(outsider), "fabrikam.com", ip=ADMIN_IP)
    rows = audit_rows(client, outsider)
    assert "fabrikam.com" in rows and "contoso.com" not in rows


def test_a_deleted_actor_is_still_named(client, org):
    post_as(client, org.admin, reverse("rotate-token"))
    org.admin.delete()  # by an operator (Django's admin): no product action deletes an account
    assert "bob@contoso.com" in audit_rows(client, org.auditor)
