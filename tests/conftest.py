"""Shared fixtures: a tenant with an owner, an admin, an auditor and a plain
user, and charlie, the outsider from another tenant who must get nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tenants.actions import accept_invitation, create_tenant, create_user, invite_member
from tenants.models import Membership, Role, Tenant, User
from tests.servers import free_port, missing, port_open

PASSWORD = "correct horse battery staple 42"


def make_user(email: str) -> User:
    """An account with a verified address, as the sign-up leaves it."""
    return create_user(email, PASSWORD)


def membership_of(user: User) -> Membership:
    """The user's membership (an account belongs to one organization)."""
    return Membership.objects.select_related("tenant", "user").get(user=user)


def add_member(tenant: Tenant, email: str, role: str) -> User:
    """A member the way people join: invited by the owner, then accepting."""
    owner = Membership.objects.select_related("tenant", "user").filter(tenant=tenant, role=Role.OWNER).first()
    invitation, _ = invite_member(owner, email, role)
    user = make_user(email)
    accept_invitation(invitation, user)
    return user


def create_tenant_in(region: str, name: str, owner: User) -> Tenant:
    """A tenant as another region's deployment creates it (the tests share one database)."""
    from django.test import override_settings

    from regions.current import current_region

    with override_settings(ARCHIVA_REGION=region):
        current_region.cache_clear()
        try:
            return create_tenant(name, owner)
        finally:
            current_region.cache_clear()  # recomputed from the restored settings


@dataclass
class Org:
    tenant: Tenant
    owner: User
    admin: User
    auditor: User
    user: User


def make_org() -> Org:
    alice = make_user("alice@contoso.com")
    tenant = create_tenant("Contoso", alice)
    return Org(
        tenant=tenant,
        owner=alice,
        admin=add_member(tenant, "bob@contoso.com", Role.ADMIN),
        auditor=add_member(tenant, "dave@contoso.com", Role.AUDITOR),
        user=add_member(tenant, "erin@contoso.com", Role.USER),
    )


def make_outsider() -> User:
    charlie = make_user("charlie@fabrikam.com")
    create_tenant("Fabrikam", charlie)
    return charlie


@pytest.fixture
def org(db) -> Org:
    """Contoso: alice owns it; bob admin, dave auditor, erin plain user."""
    return make_org()


@pytest.fixture
def outsider(db) -> User:
    """charlie owns Fabrikam and should have no access to Contoso's stuff."""
    return make_outsider()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto) on loopback for the whole run."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server]", "pip install 'moto[server]'")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield endpoint
    server.stop()


@pytest.fixture
def use_s3(settings, s3_endpoint):
    """Switch this test to the S3 store."""
    from infra.storage import get_store

    settings.ARCHIVA_STORAGE = "s3"
    settings.ARCHIVA_S3_ENDPOINT = s3_endpoint
    get_store.cache_clear()
    yield get_store()
    get_store.cache_clear()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2 at full strength costs ~0.5 s per user; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_store_cache():
    from infra.storage import get_store

    get_store.cache_clear()
    yield
    get_store.cache_clear()


@pytest.fixture(scope="session")
def redis_broker():
    if not port_open(6379):
        missing("Redis", "start redis-server on 127.0.0.1:6379")
    return os.environ["CELERY_BROKER_URL"]


# SMTP, DNS, browser, Microsoft (ms_fake), IMAP (dovecot) and Stripe (localstripe) fixtures live beside their helpers.
from tests.browser_support import browser, page, shots  # noqa: E402,F401
from tests.dns_support import dns_server, dns_server_session  # noqa: E402,F401
from tests.dovecot_support import dovecot  # noqa: E402,F401
from tests.ms_support import ms_fake  # noqa: E402,F401
from tests.smtp_support import ingest, server_factory, tls_files  # noqa: E402,F401
from tests.stripe_support import localstripe_server, stripe_server  # noqa: E402,F401
