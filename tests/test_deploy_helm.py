"""The Helm chart (infra/helm/archiva) renders and every manifest is a valid Kubernetes object.

No helm binary exists in the registries these machines reach, so the chart is
rendered by tests/tools/helmrender: Go's own text/template with Helm's Sprig
functions and include/tpl/required/toYaml, built from Debian's golang-go and
golang-github-masterminds-sprig-dev.  Each rendered object is then validated
against the Kubernetes OpenAPI definitions of its kind (tests/data/
kubernetes-definitions.json, vendored from the Kubernetes Python client), made
strict like `kubeconform -strict`: an unknown field is an error.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "infra" / "helm" / "archiva"
RENDERER = ROOT / "tests" / "tools" / "helmrender" / "main.go"
DEFINITIONS = ROOT / "tests" / "data" / "kubernetes-definitions.json"
GOPATH = "/usr/share/gocode"

SECRET_VALUES = {
    "secrets": {
        "values": {
            "database_url": "postgresql://archiva:pw@db:5432/archiva",
            "secret_key": "k" * 50,
            "broker_url": "redis://redis:6379/0",
            "cache_url": "redis://redis:6379/1",
            "s3_credentials": "[default]\naws_access_key_id = AKIA\naws_secret_access_key = s3secret\n",
            "metrics_token": "metrics-token",
        }
    }
}


@pytest.fixture(scope="module")
def helmrender(tmp_path_factory) -> Path:
    go = shutil.which("go")
    sprig = Path(GOPATH, "src/github.com/Masterminds/sprig")
    if not go or not sprig.is_dir():
        message = "needs Debian's golang-go and golang-github-masterminds-sprig-dev (bash .ci/run packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("helmrender") / "helmrender"
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", GOCACHE=str(out.parent / "cache"))
    subprocess.run([go, "build", "-o", str(out), str(RENDERER)], check=True, env=env, cwd=out.parent)
    return out


def render(helmrender: Path, tmp_path: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [str(helmrender), str(CHART), "-f", str(path), "--name", "eu1", "--namespace", "archiva"],
        capture_output=True,
        text=True,
    )


def manifests(helmrender: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    merged = copy.deepcopy(SECRET_VALUES)
    merged.update(values or {})
    result = render(helmrender, tmp_path, merged)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _strict(node: Any) -> Any:
    """The definitions with unknown fields refused, and Kubernetes' string formats widened."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if node.get("format") == "int-or-string":
            return {"type": ["integer", "string"]}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def load_definitions() -> tuple[dict[str, str], dict[str, Any]]:
    data = json.loads(DEFINITIONS.read_text())
    definitions = _strict(data["definitions"])
    # A Quantity is written as a string ("250m") or a plain number (2).
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"type": ["string", "number"]}
    return data["kinds"], definitions


KINDS, DEFINITION_MAP = load_definitions()


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    kind = f"{manifest.get('apiVersion')}/{manifest.get('kind')}"
    if kind not in KINDS:
        return [f"{kind}: not a kind the vendored definitions know"]
    schema = {"definitions": DEFINITION_MAP, "$ref": f"#/definitions/{KINDS[kind]}"}
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{kind} {manifest.get('metadata', {}).get('name')}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_the_validator_refuses_an_unknown_field_and_a_wrong_type():
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i", "port": 80}]}},
        },
    }
    assert any("'port' was unexpected" in error for error in schema_errors(deployment))
    deployment["spec"]["template"]["spec"]["containers"][0] = {"name": "c", "image": "i", "args": "web"}
    assert any("'web' is not of type 'array'" in error for error in schema_errors(deployment))
    missing = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}
    assert any("'selector' is a required property" in error for error in schema_errors(missing))


def test_every_rendered_manifest_is_valid_for_its_kind(helmrender, tmp_path):
    docs = manifests(helmrender, tmp_path)
    kinds = sorted({f"{doc['apiVersion']}/{doc['kind']}" for doc in docs})
    assert kinds == sorted(
        [
            "apps/v1/Deployment",
            "autoscaling/v2/HorizontalPodAutoscaler",
            "batch/v1/Job",
            "networking.k8s.io/v1/Ingress",
            "networking.k8s.io/v1/NetworkPolicy",
            "policy/v1/PodDisruptionBudget",
            "v1/Secret",
            "v1/Service",
        ]
    )
    assert [error for doc in docs for error in schema_errors(doc)] == []


def test_the_roles_probes_and_hooks(helmrender, tmp_path):
    docs = manifests(helmrender, tmp_path)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"eu1-archiva-web", "eu1-archiva-smtpd", "eu1-archiva-worker", "eu1-archiva-beat"}
    web = deployments["eu1-archiva-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = deployments["eu1-archiva-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["livenessProbe"]["exec"]["command"] == ["python", "manage.py", "worker_health"]
    assert container_env(deployments["eu1-archiva-worker"])["ARCHIVA_WORKER_BEAT"] == "0"
    beat = deployments["eu1-archiva-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"

    (job,) = by_kind(docs, "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]

    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "eu1-archiva-worker"
    assert hpa["spec"]["metrics"][0]["external"]["metric"] == {"name": "archiva_queue_depth"}
    worker_values = {**yaml.safe_load((CHART / "values.yaml").read_text())["worker"]}
    worker_values["autoscaling"] = {**worker_values["autoscaling"], "selector": {"namespace": "archiva-eu"}}
    (hpa,) = by_kind(manifests(helmrender, tmp_path, {"worker": worker_values}), "HorizontalPodAutoscaler").values()
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["selector"] == {"matchLabels": {"namespace": "archiva-eu"}}
    assert schema_errors(hpa) == []

    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        assert spec["template"]["spec"]["containers"][0]["resources"]["requests"], name
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
        ), pdb["metadata"]["name"]


def test_secrets_reach_the_processes_only_as_mounted_files(helmrender, tmp_path):
    docs = manifests(helmrender, tmp_path)
    (secret,) = by_kind(docs, "Secret").values()
    for deployment in by_kind(docs, "Deployment").values():
        env = container_env(deployment)
        for name in ("DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL", "AWS_SHARED_CREDENTIALS"):
            assert name not in env
            key = env[f"{name}_FILE"].removeprefix("/run/secrets/archiva/")
            assert f"{name}_FILE" != "AWS_SHARED_CREDENTIALS_FILE" or key == "s3_credentials"
            assert key in secret["stringData"]
        assert not set(secret["stringData"].values()) & set(env.values())
        mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "secrets", "mountPath": "/run/secrets/archiva", "readOnly": True} in mounts


def test_smtp_load_balancer_keeps_the_client_address(helmrender, tmp_path):
    docs = manifests(helmrender, tmp_path)
    service = by_kind(docs, "Service")["eu1-archiva-smtpd"]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    assert service["ports"] == [{"name": "smtp", "port": 25, "targetPort": "smtp", "protocol": "TCP"}]
    assert "ARCHIVA_SMTP_PROXY_PROTOCOL" not in container_env(by_kind(docs, "Deployment")["eu1-archiva-smtpd"])

    proxied = manifests(
        helmrender,
        tmp_path,
        {
            "smtpd": {
                **yaml.safe_load((CHART / "values.yaml").read_text())["smtpd"],
                "proxyProtocol": True,
                "proxyFrom": "10.0.0.0/8",
            }
        },
    )
    env = container_env(by_kind(proxied, "Deployment")["eu1-archiva-smtpd"])
    assert env["ARCHIVA_SMTP_PROXY_PROTOCOL"] == "1"
    assert env["ARCHIVA_SMTP_PROXY_FROM"] == "10.0.0.0/8"
    assert [error for doc in proxied for error in schema_errors(doc)] == []


def test_bad_values_stop_the_render_with_a_message(helmrender, tmp_path):
    smtpd = {**yaml.safe_load((CHART / "values.yaml").read_text())["smtpd"], "proxyProtocol": True}
    result = render(helmrender, tmp_path, {**SECRET_VALUES, "smtpd": smtpd})
    assert result.returncode != 0
    assert "smtpd.proxyProtocol needs smtpd.proxyFrom" in result.stderr

    result = render(helmrender, tmp_path, {})
    assert result.returncode != 0
    assert "secrets.values.cache_url is required (or set secrets.existingSecret)" in result.stderr


def test_an_existing_secret_replaces_the_generated_one(helmrender, tmp_path):
    docs = manifests(helmrender, tmp_path, {"secrets": {"existingSecret": "archiva-eu", "values": {}}})
    assert by_kind(docs, "Secret") == {}
    for deployment in by_kind(docs, "Deployment").values():
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert volumes[0]["secret"]["secretName"] == "archiva-eu"


def test_every_archiva_variable_the_chart_sets_is_read_by_the_code(helmrender, tmp_path):
    """With the defaults and with every switch that adds variables on: the
    PROXY protocol's were set by the chart and read by nothing, unseen while
    only the defaults were rendered."""
    smtpd = yaml.safe_load((CHART / "values.yaml").read_text())["smtpd"]
    proxied = {"smtpd": {**smtpd, "proxyProtocol": True, "proxyFrom": "10.0.0.0/8"}}
    names = {
        name.removesuffix("_FILE")
        for docs in (manifests(helmrender, tmp_path), manifests(helmrender, tmp_path, proxied))
        for deployment in by_kind(docs, "Deployment").values()
        for name in container_env(deployment)
        if name.startswith("ARCHIVA_")
    }
    assert {"ARCHIVA_SMTP_PROXY_PROTOCOL", "ARCHIVA_SMTP_PROXY_FROM"} <= names
    code = (
        "\n".join(
            path.read_text()
            for path in [*ROOT.glob("*/settings.py"), *ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]
            if ".venv" not in path.parts and "tests" not in path.parts
        )
        + (ROOT / "scripts" / "docker-entrypoint.sh").read_text()
    )
    assert sorted(name for name in names if name not in code) == []
