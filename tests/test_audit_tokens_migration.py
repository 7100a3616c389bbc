"""ApiToken and AuditEvent moved from the archive app to tenants in state
only (`tenants.0004`, `archive.0005`): rows written before the move are the
same rows after it, read through the tenants models, and nothing is copied."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tenants.api_tokens import display_prefix, hash_token, new_secret
from tenants.models import ApiToken, AuditEvent
from tests.conftest import make_org

BEFORE = [("archive", "0004_reindex_for_hidden_recipients"), ("tenants", "0003_tenant_m365_organization")]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def write_rows_as_the_archive_app(apps, tenant_id: int, user_id: int) -> tuple[int, int]:
    """A token and an event through the models as they were before the move."""
    OldToken = apps.get_model("archive", "ApiToken")
    OldEvent = apps.get_model("archive", "AuditEvent")
    secret = new_secret()
    token = OldToken.objects.create(
        tenant_id=tenant_id, created_by_id=user_id, name="before", token_hash=hash_token(secret),
        prefix=display_prefix(secret),
    )  # fmt: skip
    event = OldEvent.objects.create(
        tenant_id=tenant_id, user_id=user_id, token_id=token.pk, action="token-created", target="before"
    )
    return token.pk, event.pk


@pytest.mark.django_db(transaction=True)
def test_rows_written_before_the_move_are_read_through_the_tenants_models():
    org = make_org()
    leaves = latest()
    try:
        old_apps = migrate(BEFORE).loader.project_state(BEFORE).apps
        token_id, event_id = write_rows_as_the_archive_app(old_apps, org.tenant.pk, org.owner.pk)
    finally:
        migrate(leaves)
    event = AuditEvent.objects.select_related("token").get(pk=event_id)
    assert (event.tenant_id, event.user_id, event.target) == (org.tenant.pk, org.owner.pk, "before")
    assert event.token == ApiToken.objects.get(pk=token_id, name="before")


@pytest.mark.django_db
def test_the_moved_models_keep_the_archive_apps_tables():
    assert ApiToken._meta.db_table == "archive_apitoken"
    assert AuditEvent._meta.db_table == "archive_auditevent"
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
    assert {"archive_apitoken", "archive_auditevent"} <= tables
    assert not {"tenants_apitoken", "tenants_auditevent"} & tables


@pytest.mark.django_db
def test_the_archive_app_no_longer_has_the_models():
    state = MigrationExecutor(connection).loader.project_state()
    assert ("archive", "apitoken") not in state.models
    assert ("archive", "auditevent") not in state.models
    assert {("tenants", "apitoken"), ("tenants", "auditevent")} <= set(state.models)
