"""Role rules: "attribute = value → role", the first that matches wins.

A person's attributes come from Microsoft Graph at each sign-in (see
`signin.entra.DirectoryUser`): the groups and directory roles they are a
member of, their department and job title.  Values are compared without
regard to case or surrounding spaces; `memberOf` matches a group's or role's
display name or id, or a directory role's template id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tenants.models import Role

from .models import RuleAttribute

# A directory role's template id never changes, its display name has: the issue's
# "Company Administrator" is Global Administrator's legacy name.
ROLE_TEMPLATE_NAMES = {
    "company administrator": "62e90394-69f5-4237-9190-012177145e10",
    "global administrator": "62e90394-69f5-4237-9190-012177145e10",
}
RULE_ROLES = (Role.ADMIN, Role.AUDITOR, Role.USER)  # a rule never makes an owner


@dataclass(frozen=True)
class Membership:
    """A group or directory role the user is a direct member of."""

    kind: str  # "group" or "directoryRole"
    id: str
    display_name: str
    role_template_id: str = ""

    def names(self) -> set[str]:
        return {normal(v) for v in (self.id, self.display_name, self.role_template_id) if v}


@dataclass
class Attributes:
    """What the rules look at, as Graph listed it for one user."""

    member_of: list[Membership] = field(default_factory=list)
    department: str = ""
    job_title: str = ""

    @property
    def groups(self) -> list[str]:
        return sorted(m.display_name for m in self.member_of if m.kind == "group")

    @property
    def directory_roles(self) -> list[str]:
        return sorted(m.display_name for m in self.member_of if m.kind == "directoryRole")


class RuleLike(Protocol):
    attribute: str
    value: str
    role: str


R = TypeVar("R", bound=RuleLike)


def normal(value: str) -> str:
    return " ".join(str(value).split()).casefold()


def matches(attribute: str, value: str, attributes: Attributes) -> bool:
    wanted = normal(value)
    if not wanted:
        return False
    if attribute == RuleAttribute.MEMBER_OF:
        template = ROLE_TEMPLATE_NAMES.get(wanted)
        return any(wanted in m.names() or (template and template in m.names()) for m in attributes.member_of)
    if attribute == RuleAttribute.DEPARTMENT:
        return normal(attributes.department) == wanted
    if attribute == RuleAttribute.JOB_TITLE:
        return normal(attributes.job_title) == wanted
    return False


def role_for(rules: Iterable[R], attributes: Attributes, default: str) -> tuple[str, R | None]:
    """The role the first matching rule gives (and that rule), else `default` (and None)."""
    for rule in rules:
        if matches(rule.attribute, rule.value, attributes):
            return rule.role, rule
    return default, None
