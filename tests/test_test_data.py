"""Tests build their data through the product's actions, never by writing rows.

`create_tenant`, `invite_member` + `accept_invitation`, `add_alias`,
`verify_domain` (with the DNS test server), the ingest's commit and the
worker (tests/archive_support.py), `update_sender_networks`…: so a test never
sees a state the product cannot reach.  This test walks the tests' code and
fails on a direct write of a product model's rows (`X.objects.create(...)`
and its kin) outside the allow-list below, each entry with its reason.
Time-shifts (`.update(received_at=…)`) and damaged states stay possible,
with a comment saying why no action makes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.apps import apps

TESTS = Path(__file__).resolve().parent
WRITES = {"create", "bulk_create", "get_or_create", "update_or_create", "create_user", "create_superuser"}
PRODUCT_APPS = ("tenants", "archive", "ingest", "billing", "account")  # account: allauth's EmailAddress

# (file, reason): the only places that may write rows directly.
ALLOWED = {
    (
        "test_commitd.py",
        "compares the committer's hand-written INSERT with the rows the ORM writes for the same values",
    ),
    (
        "test_insert_rows.py",
        "compares the worker's hand-written INSERT of new Messages with the rows bulk_create writes",
    ),
}


def product_models() -> set[str]:
    return {model.__name__ for label in PRODUCT_APPS for model in apps.get_app_config(label).get_models()}


def direct_writes(source: str, models: set[str], filename: str = "<source>") -> list[str]:
    """`Model.objects.create(...)`-style calls on product models, as "line: Model.objects.create"."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITES):
            continue
        manager = node.func.value
        if isinstance(manager, ast.Attribute) and isinstance(manager.value, ast.Name) and manager.value.id in models:
            found.append(f"{node.lineno}: {manager.value.id}.{manager.attr}.{node.func.attr}")
    return found


def test_the_allow_list_gives_a_reason_for_each_file():
    for name, reason in ALLOWED:
        assert (TESTS / name).exists(), name
        assert len(reason.split()) >= 5, name


@pytest.mark.parametrize("path", sorted(TESTS.rglob("*.py")), ids=lambda path: path.relative_to(TESTS).as_posix())
def test_tests_write_no_product_rows_directly(path):
    allowed = {name for name, _ in ALLOWED}
    if path.relative_to(TESTS).as_posix() in allowed:
        return
    found = direct_writes(path.read_text(), product_models(), str(path))
    assert not found, f"{path.name} writes rows directly; use the actions (tenants/actions.py, …): {found}"


def test_the_guarded_models_are_the_products():
    expected = {"Tenant", "User", "Membership", "Invitation", "Alias", "Domain", "JournalToken", "EmailAddress"}
    expected |= {"ApiToken", "AuditEvent", "Message", "Delivery", "HeldMessage", "SenderNetwork", "RejectionCount"}
    assert expected <= product_models()


def test_the_guard_finds_a_direct_write():
    models = {"Membership", "Delivery"}
    source = (
        "Membership.objects.create(tenant=t, user=u, role='owner')\n"
        "Delivery.objects.bulk_create([])\n"
        "create_tenant('Contoso', alice)\n"
        "Unknown.objects.create()\n"
    )
    assert direct_writes(source, models) == ["1: Membership.objects.create", "2: Delivery.objects.bulk_create"]
