"""Packages import one way: each layer only from the layers below it.

    1  infra, regions              (and Django settings through django.conf)
    2  archive.parser              the pure MIME/journal parser
    3  tenants                     tenants, members, tokens, audit log, tenants.access
    4  search                      query language and backends
    5  ingest                      SMTP, committer, Delivery and its state machine
    6  archive                     archived messages, archiving, indexing, archive.access
    7  m365, compliance            the Microsoft 365 connection; retention, holds, export, import
    7b signin, imapjournal,       Entra sign-in, role rules, MFA policy; IMAP journaling;
       billing                     Stripe billing (each may use m365 and compliance)
    8  web                         views, API, forms
    9  archiva                     URLs, the Celery app (settings: see below)

(`ingest` does not import `search` or `archive` other than its parser either.)
Every import counts: at module level, inside functions, and under
`if TYPE_CHECKING:` (a type-only import still couples the packages and
would turn into a real one the day someone needs the name at run time).
Beyond the order: `archive.parser` imports nothing of Django or of the
project but infra and itself; `archiva.settings` is imported by nobody
(django.conf.settings is the way); `archiva.celery` only by `archiva`.

Migrations (Django writes them), tests, bench and scripts are not checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "infra",
    "regions",
    "tenants",
    "search",
    "ingest",
    "archive",
    "m365",
    "compliance",
    "signin",
    "imapjournal",
    "billing",
    "web",
    "archiva",
)
SKIPPED_DIRS = {"migrations", "tests", "bench", "scripts"}

# What each package may import besides itself: the layers below it, except
# that ingest uses neither search nor the archive beyond its parser (archive
# does the archiving and indexing).  The most specific package wins
# (archive.parser before archive).
BELOW_M365 = {"infra", "regions", "archive.parser", "tenants", "search", "ingest", "archive"}
BELOW_FEATURES = BELOW_M365 | {"m365", "compliance"}
BELOW_WEB = BELOW_FEATURES | {"signin", "imapjournal", "billing"}
MAY_IMPORT = {
    "infra": set(),
    "regions": {"infra"},
    "archive.parser": {"infra"},
    "tenants": {"infra", "regions"},
    "search": {"infra", "regions", "tenants"},
    "ingest": {"infra", "regions", "archive.parser", "tenants"},
    "archive": {"infra", "regions", "archive.parser", "tenants", "search", "ingest"},
    "m365": BELOW_M365,
    "compliance": BELOW_M365,
    "signin": BELOW_FEATURES,
    "imapjournal": BELOW_FEATURES,
    "billing": BELOW_FEATURES,
    "web": BELOW_WEB,
    "archiva": BELOW_WEB | {"web"},
}
PARSER = "archive.parser"
SETTINGS = "archiva.settings"
CELERY_APP = "archiva.celery"

# Upward imports not fixed yet, as (importing module, imported package), each
# with the change that removes it; `test_pending_exceptions_still_occur` keeps
# this set from hiding anything else.  Empty since issue 17.
PENDING: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name, resolved to a project module where it is one
    path: str  # relative to the project root
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts)
    ]


def project_modules() -> set[str]:
    return {module_name(path) for path in project_files()}


def absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of `from <level dots><module> import …` in `importer`."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_in(source: str, importer: str, is_package: bool, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every module this source imports, anywhere in its tree, with the line.

    `from pkg import name` counts as importing `pkg.name` when that is a
    module of the project (`from archive import parser`), else as `pkg`.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module, node.level, importer, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if candidate in known else base), node.lineno


def all_imports() -> list[Import]:
    known = project_modules()
    found = []
    for path in project_files():
        importer = module_name(path)
        for imported, line in imports_in(path.read_text(), importer, path.name == "__init__.py", known):
            found.append(Import(importer, imported, path.relative_to(ROOT).as_posix(), line))
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def package_of(module: str) -> str | None:
    """The package (as MAY_IMPORT names it) of a project module; None outside the project."""
    matches = [package for package in MAY_IMPORT if within(module, package)]
    return max(matches, key=len) if matches else None


def breaks_a_rule(found: Import) -> str | None:
    """Why this import is not allowed, or None."""
    mine, theirs = package_of(found.importer), package_of(found.imported)
    if within(found.imported, SETTINGS):
        return "use django.conf.settings"
    if within(found.imported, CELERY_APP) and mine != "archiva":
        return "only archiva may import the Celery app"
    if mine == PARSER and within(found.imported, "django"):
        return "the parser is pure: no Django"
    if mine is not None and theirs is not None and theirs != mine and theirs not in MAY_IMPORT[mine]:
        return f"{mine} may not import {theirs}"
    return None


def is_pending(found: Import) -> bool:
    return (found.importer, package_of(found.imported)) in PENDING


def test_no_module_imports_what_its_layer_may_not():
    offenders = [
        f"{found}: {why}" for found in all_imports() if (why := breaks_a_rule(found)) and not is_pending(found)
    ]
    assert offenders == [], "imports against the layering:\n" + "\n".join(offenders)


def test_pending_exceptions_still_occur():
    """PENDING only shrinks: a pair that no longer occurs must leave it."""
    occurring = {(f.importer, package_of(f.imported)) for f in all_imports() if breaks_a_rule(f)}
    assert PENDING - occurring == set(), "remove these from PENDING in tests/test_layers.py"


def test_the_scan_sees_every_package_and_imports_inside_functions():
    scanned = project_modules()
    assert {"archive.parser.journal", "tenants.access", "archive.access", "ingest.smtp", "web.views"} <= scanned
    assert "archiva.celery" in scanned and "archiva.settings" in scanned
    assert not any(".migrations." in module or module.startswith("tests") for module in scanned)
    assert len(all_imports()) > 500


# --- the checker itself ------------------------------------------------------


def check(source: str, importer: str, is_package: bool = False) -> list[str]:
    known = project_modules()
    found = [
        Import(importer, imported, "x.py", line) for imported, line in imports_in(source, importer, is_package, known)
    ]
    return [f"{f.line}: {f.imported}" for f in found if breaks_a_rule(f)]


def test_the_checker_flags_an_import_inside_a_function():
    source = "import logging\n\ndef f():\n    from archive.models import Message\n    return Message\n"
    assert check(source, "tenants.access") == ["4: archive.models"]


def test_the_checker_flags_a_type_only_import():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from web.views import landing_page\n"
    assert check(source, "ingest.smtp") == ["3: web.views"]


def test_the_checker_resolves_relative_imports_and_submodules():
    assert check("from ..models import Message\n", "tenants.access") == []
    assert check("from .. import actions\n", "tenants.adapter.x") == []
    assert check("from ..archive import models\n", "web.x", is_package=True) == []
    assert check("from archive import actions\n", "ingest.smtp") == ["1: archive.actions"]
    assert check("from archive import parser\n", "ingest.smtp") == []


def test_the_checker_allows_imports_down_and_across_one_layer():
    source = "from tenants.models import Tenant\nfrom archive.parser import mime\nfrom infra.storage import get_store\n"
    assert check(source, "ingest.record") == []
    assert check("from archive.access import message_for\n", "web.messages") == []
    assert check("import celery\nfrom django.db import models\n", "tenants.models") == []


def test_the_parser_imports_neither_django_nor_the_layers_above_infra():
    assert check("from django.db import models\n", "archive.parser.mime") == ["1: django.db"]
    assert check("from tenants.models import Tenant\n", "archive.parser.mime") == ["1: tenants.models"]
    assert check("from regions.current import current_region\n", "archive.parser.mime") == ["1: regions.current"]
    assert check("from infra.text import storable\nfrom archive.parser import rawmime\n", "archive.parser.x") == []
    assert check("from archive.models import Message\n", "archive.parser.mime") == ["1: archive.models"]


def test_settings_and_the_celery_app_are_imported_only_where_allowed():
    assert check("from archiva.settings import DEBUG\n", "web.views") == ["1: archiva.settings"]
    assert check("from archiva import settings\n", "archiva.urls") == ["1: archiva.settings"]
    assert check("from archiva.celery import app\n", "web.checks") == ["1: archiva.celery"]
    assert check("from archiva.celery import app\n", "archiva", is_package=True) == []


# --- no module uses another module's _private names --------------------------

# Underscored names that are a library's documented interface.
LIBRARY_NAMES = {
    "_meta",  # Django's model options API
    "_state",  # Django's Model._state (adding, db), in the model instance reference
    "_replace",  # namedtuple's method (urlsplit results)
    "_exit",  # os._exit: leave a forked child without running the parent's cleanup
}
# Library internals we must reach, each explained where it is used.
LIBRARY_USES = {
    ("infra/logs.py", "_srcfile"),  # logging's switch, documented in the logging HOWTO
    ("archive/parser/message.py", "_payload"),  # email: the payload still encoded (see part_payload)
    ("archive/parser/tnef.py", "_name"),  # tnefparse: the short name when long_filename() fails
    # imapclient's imaplib connection: its read buffer and the untagged responses imapclient drops
    # (imapjournal.poller.Session.received and .announced say why)
    ("imapjournal/poller.py", "_imap"),
}
# Uses of another module's private names not fixed yet, as (file, name); empty
# since issue 17, and `test_private_pending_exceptions_still_occur` keeps it so.
PRIVATE_PENDING: set[tuple[str, str]] = set()


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def is_own(node: ast.expr) -> bool:
    """`self`, `cls` or `super()`: an object's own (or its base class's) attributes."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def private_uses(source: str, importer: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Private names this source imports from another module or reads off another object."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and absolute(node.module, node.level, importer, is_package) != importer:
            yield from ((alias.name, node.lineno) for alias in node.names if is_private(alias.name))
        elif isinstance(node, ast.Attribute) and is_private(node.attr) and not is_own(node.value):
            if node.attr not in LIBRARY_NAMES:
                yield node.attr, node.lineno


def all_private_uses() -> list[tuple[str, str, int]]:
    found = []
    for path in project_files():
        relative = path.relative_to(ROOT).as_posix()
        for name, line in private_uses(path.read_text(), module_name(path), path.name == "__init__.py"):
            if (relative, name) not in LIBRARY_USES:
                found.append((relative, name, line))
    return found


def test_no_module_uses_another_modules_private_names():
    offenders = [
        f"{path}:{line}: {name}" for path, name, line in all_private_uses() if (path, name) not in PRIVATE_PENDING
    ]
    assert offenders == [], "make these public (with a docstring) or move them:\n" + "\n".join(offenders)


def test_private_pending_exceptions_still_occur():
    occurring = {(path, name) for path, name, _ in all_private_uses()}
    assert PRIVATE_PENDING - occurring == set(), "remove these from PRIVATE_PENDING in tests/test_layers.py"


def test_the_private_name_checker_flags_imports_and_attributes_of_others():
    source = (
        "from ingest.tasks import _retryable\n"
        "from ingest import held\n"
        "held._release(1)\n"
        "self.directory._loaded\n"
        "self._mine()\n"
        "super()._hook()\n"
        "Message._meta\n"
        "from ._own import thing\n"
    )
    found = [f"{line}: {name}" for name, line in sorted(private_uses(source, "archive.x", False), key=lambda u: u[1])]
    assert found == ["1: _retryable", "3: _release", "4: _loaded"]
