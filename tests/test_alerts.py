"""infra/monitoring/alerts.yml: each rule fires when it should, and not before (promtool test rules).

promtool comes with Debian's `prometheus` package (installed by `.ci/run packages`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "infra" / "monitoring"
OPERATIONS = ROOT / "docs" / "operations.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        message = "needs promtool (Debian's prometheus package: bash .ci/run packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for rule in group["rules"]
    ]


def test_the_rules_are_valid(promtool):
    result = subprocess.run(
        [promtool, "check", "rules", str(MONITORING / "alerts.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_prometheus_configuration_is_valid(promtool, tmp_path):
    # credentials_file must exist for promtool; the rule file is found beside the configuration.
    config = (MONITORING / "prometheus.yml").read_text()
    token = tmp_path / "token"
    token.write_text("t")
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/secrets/archiva_metrics_token", str(token))
    )
    shutil.copy(MONITORING / "alerts.yml", tmp_path)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


def test_the_rules_fire_as_their_tests_expect(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_threshold_fails_the_rule_tests(promtool, tmp_path):
    """The rule tests can fail: the backlog alert at 30 minutes instead of 5 is caught."""
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path)
    text = (MONITORING / "alerts.yml").read_text()
    assert "archiva_backlog_age_seconds > 300" in text
    (tmp_path / "alerts.yml").write_text(
        text.replace("archiva_backlog_age_seconds > 300", "archiva_backlog_age_seconds > 1800")
    )
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ArchivaBacklogOld" in result.stdout + result.stderr


def test_every_alert_is_tested_and_has_a_runbook():
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    names = {rule["alert"] for rule in rules()}
    assert names - tested == set()
    anchors = {
        heading.strip().lower().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.MULTILINE)
    }
    for rule in rules():
        anchor = rule["annotations"]["runbook"].removeprefix("docs/operations.md#")
        assert anchor in anchors, f"{rule['alert']}: no section '{anchor}' in docs/operations.md"
        assert rule["labels"]["severity"] in {"page", "ticket"}
