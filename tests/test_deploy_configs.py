"""ops/deploy: Prometheus config and alert rules checked by promtool (syntax,
and unit tests that each alert fires when it should), Grafana provisioning
and dashboard JSON checked for what Grafana needs to load them.

Whether the metrics they use exist is test_observability's job, against
running processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import promql

pytestmark = pytest.mark.timeout(60)

PROM = promql.DEPLOY / "prometheus"
GRAFANA = promql.DEPLOY / "grafana"
# Grafana's own variables, replaced by what Grafana would put there.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$owner": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: .ci/run installs it (Debian package `prometheus`)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def run(promtool: str, *args: str, cwd: Path = PROM) -> str:
    out = subprocess.run([promtool, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_prometheus_config_and_rules_are_valid(promtool):
    # --syntax-only: the admin token and CA files it names exist only in the deployed container
    assert "SUCCESS" in run(promtool, "check", "config", "--syntax-only", "prometheus.yml")
    assert "SUCCESS: 8 rules found" in run(promtool, "check", "rules", "alerts.yml")


def test_each_alert_fires_when_it_should_and_not_before(promtool):
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml")
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    assert tested == {r["alert"] for r in rules}, "every alert has a unit test"
    for r in rules:
        assert r["for"] and r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    # promtool checks expressions inside rule files, so each query becomes a recording rule
    rules = []
    for dash in promql.DASHBOARDS:
        for i, expr in enumerate(promql.dashboard_exprs(dash)):
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown Grafana variable in {expr}"
            rules.append({"record": f"dashboard:{dash.stem}:{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run(promtool, "check", "rules", str(path))


def test_grafana_provisioning_points_at_the_dashboards():
    [ds] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "gpubus.yml").read_text())["providers"]
    assert ds["type"] == "prometheus" and provider["type"] == "file" and provider["options"]["path"]
    for path in promql.DASHBOARDS:
        dash = json.loads(path.read_text())
        uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
        uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
        assert uids == {ds["uid"]}, "every panel queries the provisioned datasource"


def test_dashboard_json_is_loadable_and_has_the_panels_operators_need():
    [path] = promql.DASHBOARDS
    dash = json.loads(path.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] != "row":
            assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in (
        "queue lag per user",
        "pending per lane",
        "throughput",
        "gpu memory",
        "gpu utilisation",
        "p50 / p95 / p99",
        "fallback rate",
        "failure rate by error code",
        "live nodes",
    ):
        assert needed in titles, f"no panel for {needed}"
