"""The chart renders what a platform team installs, and every object is valid.

Two renders are checked: the default values, and ``values-custom.yaml`` (namespaced mode,
ServiceMonitor + PodMonitor + PrometheusRule on, an image pinned by digest, custom resources
and operator settings).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    by_kind,
    helm,
    one,
    template,
    write_values,
)
from tests.helm.validate import validate_all, validate_monitoring
from tests.support.users import getuser_without_passwd_entry
from tidetune.cli import main as tidetune_main
from tidetune_operator.config import CONFIG_ENV, OperatorConfig, load_config

CUSTOM = pathlib.Path(__file__).with_name("values-custom.yaml")
#: The chart's minimum (Chart.yaml kubeVersion: the CRDs use x-kubernetes-validations
#: fieldPath/reason, new in 1.28) and the newest version kubernetes-validate knows.
KUBE_VERSIONS = ("1.28.0", "1.37.0")

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return template(include_crds=True)


@pytest.fixture(scope="module")
def custom_docs() -> list[dict[str, Any]]:
    return template([CUSTOM], include_crds=True)


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(docs, "Deployment")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _load_rendered_config(docs: list[dict[str, Any]], tmp_path: pathlib.Path) -> OperatorConfig:
    """Mount the rendered ConfigMap as the Deployment does and load it like the operator."""
    dep = one(docs, "Deployment")
    container = _container(docs)
    path = _env(container)[CONFIG_ENV]
    mount_dir, key = path.rsplit("/", 1)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == mount_dir)
    volume = next(
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    cm = one(docs, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / key
    local.write_text(cm["data"][key], encoding="utf-8")
    return load_config({CONFIG_ENV: str(local)})


# -- lint -----------------------------------------------------------------------------------


def test_lint_strict_with_default_values() -> None:
    res = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in res.stdout, res.stdout


def test_lint_strict_with_custom_values() -> None:
    res = helm("lint", "--strict", str(CHART), "--values", str(CUSTOM))
    assert "0 chart(s) failed" in res.stdout, res.stdout


# -- CRDs -----------------------------------------------------------------------------------


def test_chart_crds_are_the_generated_ones() -> None:
    """Fails when helm/tidetune/crds drifted from the models: copy `tidetune crds` output."""
    assert tidetune_main(["crds", "--check", str(CHART / "crds")]) == 0, (
        "helm/tidetune/crds differs from the models; run "
        "`tidetune crds --write crds && cp crds/*.yaml helm/tidetune/crds/`"
    )
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sorted(
        p.name for p in (REPO_ROOT / "crds").glob("*.yaml")
    )


def test_crds_are_rendered_with_include_crds(default_docs: list[dict[str, Any]]) -> None:
    names = {d["metadata"]["name"] for d in by_kind(default_docs, "CustomResourceDefinition")}
    assert names == {"finetunejobs.tidetune.io", "idlepools.tidetune.io"}


# -- every object valid ---------------------------------------------------------------------


def test_validated_versions_start_at_the_charts_minimum() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


def test_default_render_is_valid(default_docs: list[dict[str, Any]]) -> None:
    assert validate_all(default_docs, KUBE_VERSIONS) == []


def test_custom_render_is_valid(custom_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in custom_docs}
    assert {"ServiceMonitor", "PodMonitor"} <= kinds
    assert validate_all(custom_docs, KUBE_VERSIONS) == []


def test_validation_catches_mistakes(default_docs: list[dict[str, Any]]) -> None:
    """The validators would fail a bad object (so a clean pass above means something)."""
    dep = json.loads(json.dumps(one(default_docs, "Deployment")))
    dep["spec"]["replicas"] = "one"
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    problems = validate_all([dep], ["1.37.0"])
    assert problems and "Deployment" in problems[0]
    bad_monitor: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]},
    }
    assert validate_monitoring(bad_monitor) == [
        "ServiceMonitor/x: spec.endpoints[0].intervall: unknown field"
    ]
    bad_monitor["spec"]["endpoints"] = [{"port": "metrics", "interval": "30 seconds"}]
    assert any("interval" in p for p in validate_monitoring(bad_monitor))


# -- the operator Deployment ----------------------------------------------------------------


def test_deployment_runs_one_operator_replaced_not_rolled(
    default_docs: list[dict[str, Any]],
) -> None:
    dep = one(default_docs, "Deployment")
    assert dep["metadata"]["namespace"] == NAMESPACE
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(default_docs)
    assert container["command"][:7] == [
        "kopf",
        "run",
        "-A",
        "--standalone",
        "-m",
        "tidetune_operator.handlers",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]
    assert container["image"] == "ghcr.io/tidetune/operator:0.1.0"  # appVersion


def test_probes_hit_kopfs_liveness_endpoint(default_docs: list[dict[str, Any]]) -> None:
    container = _container(default_docs)
    liveness = next(c for c in container["command"] if c.startswith("--liveness="))
    port = int(liveness.rsplit(":", 1)[1].split("/")[0])
    path = "/" + liveness.split("/", 3)[3]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports[http["port"]] == port


def test_restricted_security_context(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    for docs in (default_docs, custom_docs):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        container = _container(docs)
        for key, value in RESTRICTED_CONTAINER.items():
            assert container["securityContext"][key] == value, key
        assert not container["securityContext"].get("privileged")
        # read-only root: /tmp is the one writable place (an emptyDir)
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume
        assert _env(container)["HOME"] == "/tmp"


def test_operator_has_a_user_name_for_kopf(
    default_docs: list[dict[str, Any]],
    custom_docs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """runAsUser 65532 has no passwd entry; kopf's getpass.getuser() needs USER."""
    for docs in (default_docs, custom_docs):
        env = _env(_container(docs))
        assert env["USER"] == "tidetune"
        assert getuser_without_passwd_entry(env, monkeypatch) == "tidetune"


def test_resources_from_values(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    assert _container(default_docs)["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert _container(custom_docs)["resources"] == {
        "requests": {"cpu": "250m", "memory": "384Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }


def test_default_config_loads_as_the_operators_defaults(
    default_docs: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    config = _load_rendered_config(default_docs, tmp_path)
    defaults = OperatorConfig()
    assert config == defaults
    assert config.default_output_uri is None and config.namespaces == []


def test_custom_config_loads(custom_docs: list[dict[str, Any]], tmp_path: pathlib.Path) -> None:
    config = _load_rendered_config(custom_docs, tmp_path)
    assert config.trainer_image == "registry.example.com/ml/tidetune-trainer:0.1.0-cu124"
    assert config.default_output_uri == "s3://ml-artifacts/tidetune"
    assert config.namespaces == ["team-a", "team-b"]
    assert config.metrics_port == 9090 and config.workers == 32
    assert config.termination_grace_seconds == 600
    assert config.estimate_tables.prices["h100"] == 2.5
    assert config.estimate_tables.currency == "EUR"


def test_trainer_env_reaches_the_operator(tmp_path: pathlib.Path) -> None:
    env = {"NCCL_DEBUG": "WARN", "HF_ENDPOINT": "https://hf-mirror.example.com"}
    docs = template([write_values(tmp_path / "v.yaml", {"config": {"trainerEnv": env}})])
    assert _load_rendered_config(docs, tmp_path).trainer_env == env


def test_clock_offset_test_facility_is_accepted_and_reaches_the_operator(
    tmp_path: pathlib.Path,
) -> None:
    """Not in values.yaml (never for a real install), but a lab may set it."""
    docs = template([write_values(tmp_path / "v.yaml", {"config": {"clockOffsetSeconds": -5400}})])
    assert _load_rendered_config(docs, tmp_path).clock_offset_seconds == -5400


def test_config_change_rolls_the_pod(tmp_path: pathlib.Path) -> None:
    def checksum(values: dict[str, Any]) -> str:
        docs = template([write_values(tmp_path / "v.yaml", values)])
        annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) != checksum({"config": {"workers": 4}})


def test_custom_values_namespaced_mode_and_image(custom_docs: list[dict[str, Any]]) -> None:
    container = _container(custom_docs)
    command = container["command"]
    assert "-A" not in command
    assert [c for c in command if c.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--liveness=http://0.0.0.0:9081/healthz" in command
    assert "--log-format=json" in command and "--verbose" in command
    assert container["image"] == (
        "registry.example.com/ml/tidetune-operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert container["imagePullPolicy"] == "Always"
    pod = one(custom_docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tidetune-op"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert one(custom_docs, "ServiceAccount")["metadata"]["name"] == "tidetune-op"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 9081}


# -- metrics, monitors, dashboard, alerts ---------------------------------------------------


def test_metrics_service_targets_the_metrics_port(default_docs: list[dict[str, Any]]) -> None:
    svc = one(default_docs, "Service")
    dep = one(default_docs, "Deployment")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert not by_kind(default_docs, "ServiceMonitor") and not by_kind(default_docs, "PodMonitor")


def test_service_monitor_selects_the_metrics_service(custom_docs: list[dict[str, Any]]) -> None:
    sm = one(custom_docs, "ServiceMonitor")
    svc = one(custom_docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [svc["spec"]["ports"][0]["name"]]
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    # the series' own `namespace` (the job's) wins over the target's (the operator's)
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_scrapes_trainer_pods(custom_docs: list[dict[str, Any]]) -> None:
    from tidetune.api.constants import JOB_LABEL

    pm = one(custom_docs, "PodMonitor")
    assert pm["spec"]["selector"] == {
        "matchExpressions": [{"key": JOB_LABEL, "operator": "Exists"}]
    }
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    # the trainer container names its port `metrics` (tidetune_operator.builders.pod_template)
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]
    default_pm = template(extra=["--set", "metrics.podMonitor.enabled=true"])
    assert one(default_pm, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def _chart_copy(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """The chart copied to ``tmp_path`` with ``files/`` holding exactly ``files``."""
    chart = tmp_path / "tidetune"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("files"))
    (chart / "files").mkdir()
    for name, text in files.items():
        (chart / "files" / name).write_text(text, encoding="utf-8")
    return chart


ALERTS = """\
groups:
  - name: tidetune-test
    rules:
      - alert: TideTuneJobFailed
        expr: increase(tidetune_phase_transitions_total{phase="Failed"}[10m]) > 0
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.namespace }}: a FineTuneJob failed"
"""


def test_dashboard_and_rule_come_from_the_files(tmp_path: pathlib.Path) -> None:
    dashboard = {"title": "TideTune", "panels": [], "schemaVersion": 39}
    chart = _chart_copy(tmp_path, {"dashboard.json": json.dumps(dashboard), "alerts.yaml": ALERTS})
    docs = template([CUSTOM], chart=chart, extra=["--set", "dashboard.namespace="])
    cm = one(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(cm["data"]["tidetune.json"]) == dashboard
    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS)  # the Grafana-style template survives as text
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert validate_monitoring(rule) == []


def test_chart_renders_without_dashboard_or_alert_files(tmp_path: pathlib.Path) -> None:
    chart = _chart_copy(tmp_path, {})
    docs = template([CUSTOM], chart=chart)
    assert not by_kind(docs, "PrometheusRule")
    assert all(d["metadata"]["name"] != f"{RELEASE}-dashboard" for d in by_kind(docs, "ConfigMap"))


def test_bad_alerts_file_fails_clearly(tmp_path: pathlib.Path) -> None:
    chart = _chart_copy(tmp_path, {"alerts.yaml": "rules: []\n"})
    res = helm("template", RELEASE, str(chart), "--set", "prometheusRule.enabled=true", check=False)
    assert res.returncode != 0 and "groups" in res.stderr


def test_shipped_dashboard_and_alerts_render_when_present(
    custom_docs: list[dict[str, Any]],
) -> None:
    """With the real files/ (written by the observability work) both objects are rendered."""
    files = CHART / "files"
    if (files / "dashboard.json").is_file():
        cm = one(custom_docs, "ConfigMap", f"{RELEASE}-dashboard")
        assert cm["metadata"]["namespace"] == "monitoring"
        assert json.loads(cm["data"]["tidetune.json"]) == json.loads(
            (files / "dashboard.json").read_text(encoding="utf-8")
        )
    if (files / "alerts.yaml").is_file():
        rule = one(custom_docs, "PrometheusRule")
        expected = yaml.safe_load((files / "alerts.yaml").read_text(encoding="utf-8"))
        assert rule["spec"]["groups"] == expected["groups"]


# -- NOTES ----------------------------------------------------------------------------------


def test_notes_tell_the_user_what_to_do_next() -> None:
    res = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client")
    notes = res.stdout.split("NOTES:", 1)[1]
    for expected in (
        "kubectl apply -f examples/idlepool.yaml",
        "get ftj",
        "wait --for=condition=Succeeded",
        "create secret generic",
        "grafana_dashboard",
        "kubectl apply -f helm/tidetune/crds/",
        "every job must set spec.output.uri",
    ):
        assert expected in notes, expected
