"""The Prometheus alerts (helm/tidetune/files/alerts.yaml): ``promtool check rules``, the
promtool unit tests in ``alerts_test.yaml``, and what every alert must carry."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.observability.conftest import ALERTS, ALERTS_TEST, CHART_FILES, metric_families
from tidetune_operator import metrics

EXPECTED = {
    "TideTuneJobFailed",
    "TideTuneJobQueuedTooLong",
    "TideTunePoolIdleWhileJobsWait",
    "TideTuneReconcileErrors",
    "TideTuneOperatorMetricsAbsent",
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules(promtool: str) -> None:
    res = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout + res.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    res = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=CHART_FILES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_every_alert_has_severity_annotations_and_reads_real_metrics() -> None:
    known = {f.name for f in metrics.REGISTRY.collect()}
    found = set()
    for rule in rules():
        name = rule["alert"]
        found.add(name)
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name}: no {key} annotation"
        families = metric_families(rule["expr"])
        assert families and families <= known, f"{name}: {families - known} not exported"
    assert found == EXPECTED


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == EXPECTED, f"never seen firing: {EXPECTED - fired}"
    assert quiet == EXPECTED, f"never seen quiet: {EXPECTED - quiet}"
