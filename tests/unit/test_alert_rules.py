"""The Prometheus alert rules and the Grafana dashboard in infra/, checked by their own tools."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.servers import find_binary

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("promtool"), *args],
        cwd=INFRA / "prometheus",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prometheus_config_and_rules_are_valid() -> None:
    """The Prometheus config and both rule files it loads pass `promtool check config`."""
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changes.yml" in done.stdout + done.stderr


@pytest.mark.parametrize("tests", ["alerts.test.yml", "changes.test.yml"])
def test_alert_rules_pass_their_unit_tests(tests: str) -> None:
    """`promtool test rules`: each alert fires on its synthetic series, and only then."""
    done = _promtool("test", "rules", tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_on_changes_is_unit_tested() -> None:
    """Each alert in changes.yml appears in changes.test.yml with an expected firing."""
    rules = (INFRA / "prometheus" / "changes.yml").read_text()
    tested = (INFRA / "prometheus" / "changes.test.yml").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert alerts
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tested), alert


def test_dashboard_queries_parse_and_name_documented_metrics(tmp_path: Path) -> None:
    """Every query of the Grafana dashboard is valid PromQL naming only documented metrics."""
    dashboard = json.loads((INFRA / "grafana" / "changeguard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-queries.yml").write_text(json.dumps(rules))  # JSON is YAML
    done = _promtool("check", "rules", str(tmp_path / "dashboard-queries.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    documented = (INFRA.parent / "docs" / "observability.md").read_text()
    for expr in exprs:
        for name in re.findall(r"changeguard_\w+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f"`{base}`" in documented, (
                f"{name} (in {expr!r}) is not in docs/observability.md"
            )
