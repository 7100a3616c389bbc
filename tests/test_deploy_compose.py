"""infra/compose/compose.yaml: valid Compose, and one region that starts in order.

No Docker Compose plugin is packaged for these machines, so the file is
validated against the Compose Specification's own JSON schema
(tests/data/compose-spec.json, from https://github.com/compose-spec/compose-spec
/blob/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json),
after the interpolation `docker compose config` does (${VAR:-default}).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "infra" / "compose"
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
ARCHIVA_ROLES = {"migrate", "web", "smtpd", "worker", "beat"}
DATA_SERVICES = {"postgres", "redis", "minio", "elasticsearch"}


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return INTERPOLATION.sub(lambda m: env.get(m["name"], m["default"] or ""), node)
    return node


def dotenv(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def errors(document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return interpolate(loaded, dotenv(COMPOSE / ".env.example"))


def test_the_schema_refuses_what_compose_refuses():
    assert errors({"services": {"web": {"image": "x", "restart": "sometimes", "port": [80]}}})
    assert any("'port' does not match any of the regexes" in e for e in errors({"services": {"web": {"port": [80]}}}))
    assert errors({"services": {"web": {"image": "x", "healthcheck": {"interval": 10}}}})


def test_the_compose_file_is_valid(compose):
    assert errors(compose) == []


def test_every_variable_has_a_default_or_an_example():
    text = (COMPOSE / "compose.yaml").read_text()
    example = dotenv(COMPOSE / ".env.example")
    missing = {m["name"] for m in INTERPOLATION.finditer(text) if m["default"] is None and m["name"] not in example}
    assert missing == set()


def test_one_region_starts_in_order(compose):
    services = compose["services"]
    assert set(services) == ARCHIVA_ROLES | DATA_SERVICES
    for name in DATA_SERVICES:
        assert services[name]["healthcheck"]["test"], name
        assert any(":" in volume for volume in services[name].get("volumes", [])) or name == "redis", name
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ARCHIVA_ROLES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert {dep for dep, how in depends.items() if how["condition"] == "service_healthy"} == DATA_SERVICES, name
    assert services["worker"]["environment"]["ARCHIVA_WORKER_BEAT"] == "0"
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "manage.py", "worker_health"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["smtpd"]["ports"] == ["0.0.0.0:25:2525"]


def test_secrets_are_files_and_all_are_declared(compose):
    declared = set(compose["secrets"])
    for name, service in compose["services"].items():
        assert set(service.get("secrets", [])) <= declared, name
        for variable, value in (service.get("environment") or {}).items():
            if variable.endswith("_FILE"):  # NAME_FILE, and boto3's AWS_SHARED_CREDENTIALS_FILE
                secret = value.removeprefix("/run/secrets/")
                assert secret in service["secrets"], (name, variable)
            assert not re.search(r"(PASSWORD|SECRET_KEY|TOKEN)$", variable), (name, variable)
    named = {volume.split(":")[0] for s in compose["services"].values() for volume in s.get("volumes", [])}
    assert named <= set(compose["volumes"])


def test_every_archiva_variable_the_services_set_is_read_by_the_code(compose):
    names = {
        name.removesuffix("_FILE")
        for service in compose["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("ARCHIVA_")
    }
    sources = [*ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py"), *ROOT.glob("*/*/*/*.py")]
    code = "\n".join(p.read_text() for p in sources if ".venv" not in p.parts and "tests" not in p.parts)
    code += (ROOT / "scripts" / "docker-entrypoint.sh").read_text()
    assert sorted(name for name in names if name not in code) == []
