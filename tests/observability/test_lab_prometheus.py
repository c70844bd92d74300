"""The dashboard and the alerts against a real Prometheus scraping the lab's operator.

The session's lab (a real API server, the Kubeflow training operator, the node agent, S3)
with TideTune installed by its chart (the ``stack`` fixture), and one ``prometheus`` on a
free loopback port (``.tools/bin/prometheus``, built from its Go module with Kubernetes
discovery, which Debian's package leaves out) that finds the operator the way a cluster's
Prometheus does: Kubernetes service discovery (``role: endpoints``) against the lab's API
server (TLS, the admin's client certificate), with the scrape job the Prometheus Operator
generates from the chart's ServiceMonitor (its keep rules, target labels and
``honor_labels``), every second, loading ``alerts.yaml``. It scrapes the operator pod's IP on
the lab bridge.

In namespace ``obs``: an IdlePool over the lab's GPU nodes open all week and one whose only
window is hours away; a tiny job in the open pool trains to Succeeded on a GPU node, one
waits for the closed pool, one fails (it needs more GPUs than its pool has: ``PoolTooSmall``;
a missing Secret would only make it wait). Then every dashboard query, with the template
variables filled in, must return data through Prometheus' HTTP API. The operator is the
session's, shared with the e2e tier: everything here lives in ``obs`` and pools of its own,
deleted at the end.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import datetime
import json
import math
import pathlib
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helm.chart import template, write_values
from tests.lab.cluster import GPU_POOL, REPO_ROOT, Lab
from tests.lab.deploy import OPERATOR_NAMESPACE, Stack, tiny_job, wait_for
from tests.observability.conftest import ALERTS, panels, substitute, variable_query
from tidetune.torchrun_nodes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NS = "obs"
OPEN_POOL = "obs-open-all-week"
CLOSED_POOL = "obs-closed-now"
DONE_JOB = "curve"
WAITING_JOB = "waiting"
FAILED_JOB = "broken"
WINDOW_VALUES = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def chart_service_monitor(stack: Stack, workdir: pathlib.Path) -> dict[str, Any]:
    """The ServiceMonitor the chart renders with the lab's values and
    ``metrics.serviceMonitor.enabled``."""
    values = write_values(workdir / "values.yaml", stack.values)
    docs = template([values], extra=["--set", "metrics.serviceMonitor.enabled=true"])
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    return monitor


def _label(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def service_monitor_job(monitor: dict[str, Any], lab: Lab, interval: str = "1s") -> dict[str, Any]:
    """The scrape job the Prometheus Operator generates for ``monitor``'s first endpoint
    (``generateServiceMonitorConfig``: endpoints discovery in the selected namespaces, a keep
    rule per selector label and for the port name, the ``namespace``/``service``/``pod``/
    ``container``/``job``/``endpoint`` target labels, finished pods dropped, the endpoint's
    ``honorLabels``), discovering through the lab's API server as its admin. Only
    ``interval`` differs (seconds here, not the chart's 30 s)."""
    spec = monitor["spec"]
    (endpoint,) = spec["endpoints"]
    assert set(spec["selector"]) == {"matchLabels"}, spec["selector"]
    names = spec["namespaceSelector"].get("matchNames") or [monitor["metadata"]["namespace"]]
    relabel: list[dict[str, Any]] = [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_service_label_{_label(key)}",
                f"__meta_kubernetes_service_labelpresent_{_label(key)}",
            ],
            "regex": f"({value});true",
        }
        for key, value in sorted(spec["selector"]["matchLabels"].items())
    ]
    kind_name = [
        "__meta_kubernetes_endpoint_address_target_kind",
        "__meta_kubernetes_endpoint_address_target_name",
    ]
    relabel += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_endpoint_port_name"],
            "regex": endpoint["port"],
        },
        {"source_labels": kind_name, "regex": "Node;(.*)", "target_label": "node"},
        {"source_labels": kind_name, "regex": "Pod;(.*)", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {
            "action": "drop",
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "(Failed|Succeeded)",
        },
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    meta = monitor["metadata"]
    return {
        "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "kubernetes_sd_configs": [
            {
                "role": "endpoints",
                "api_server": lab.api_url,
                "namespaces": {"names": names},
                "tls_config": {
                    "ca_file": str(lab.pki / "cluster-ca.crt"),
                    "cert_file": str(lab.pki / "admin.crt"),
                    "key_file": str(lab.pki / "admin.key"),
                },
            }
        ],
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": endpoint.get("path", "/metrics"),
        "relabel_configs": relabel,
    }


class Prometheus:
    """A ``prometheus`` process on 127.0.0.1 with its data in ``workdir`` (stopped by ``stop``)."""

    def __init__(
        self,
        binary: str,
        workdir: pathlib.Path,
        scrape_configs: list[dict[str, Any]],
        rules: pathlib.Path,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": scrape_configs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        wait_for(self._ready, 30, "Prometheus to be ready", self.log_tail)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` (fails the test on an API error)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path} {params}: HTTP {err.code}: {err.read()!r}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclasses.dataclass
class Observed:
    stack: Stack
    prometheus: Prometheus

    @property
    def metrics_url(self) -> str:
        """The operator pod's metrics endpoint on the lab bridge (what Prometheus scrapes)."""
        (pod,) = self.stack.operator_pods()
        return f"http://{pod['status']['podIP']}:8080/metrics"


#: what the pools say they have: every GPU of the lab's GPU nodes
POOL_GPUS = GPU_POOL["gpusPerNode"] * 2


def _pool(name: str, windows: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "idlepool.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    doc["spec"].update(
        gpus=POOL_GPUS,
        timezone="UTC",
        windows=windows,
        nodeSelector=GPU_POOL["nodeSelector"],
        tolerations=GPU_POOL["tolerations"],
    )
    return doc


ALL_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
#: a job in a pool takes at least one GPU (the trainer runs on CPU in the lab all the same)
ONE_GPU = {"nodes": 1, "gpusPerNode": 1}


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str, stack: Stack
) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("obs")
    job = service_monitor_job(chart_service_monitor(stack, workdir), stack.lab)
    prometheus: Prometheus | None = None
    # the example pool's priorityClassName, as a cluster admin creates it (the pods are
    # refused without it)
    priority_class = _pool("-", [])["spec"]["priorityClassName"]
    had_priority_class = bool(
        stack.kubectl("get", "priorityclass", priority_class, "--ignore-not-found", "-o", "name")
    )
    stack.apply(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority_class},
            "value": -10,
            "preemptionPolicy": "Never",
            "description": "TideTune jobs on idle pools: first to go",
        }
    )
    try:
        prometheus = Prometheus(prometheus_bin, workdir / "prometheus", [job], ALERTS)
        obs = Observed(stack, prometheus)
        _run_the_scenario(obs)
        yield obs
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=90s", check=False)
        stack.kubectl("delete", "idlepool", OPEN_POOL, CLOSED_POOL, "--ignore-not-found")
        if not had_priority_class:
            stack.kubectl("delete", "priorityclass", priority_class, "--ignore-not-found")


def test_prometheus_finds_the_operator_through_the_service_monitor(observed: Observed) -> None:
    """One target: the operator pod behind the chart's metrics Service, up, labelled as the
    Prometheus Operator labels it."""
    targets = observed.prometheus.api("targets", state="active")["activeTargets"]
    (pod,) = observed.stack.operator_pods()
    assert [t["labels"] for t in targets] == [
        {
            "container": "operator",
            "endpoint": "metrics",
            "instance": f"{pod['status']['podIP']}:8080",
            "job": "tidetune-metrics",
            "namespace": OPERATOR_NAMESPACE,
            "pod": pod["metadata"]["name"],
            "service": "tidetune-metrics",
        }
    ], targets
    assert targets[0]["health"] == "up", targets


def _run_the_scenario(obs: Observed) -> None:
    stack, prom = obs.stack, obs.prometheus
    stack.namespace(NS)
    # discovery: the operator's endpoint is a target, and scraped
    wait_for(
        lambda: prom.query("up{service='tidetune-metrics'} == 1") or None,
        30,
        "Prometheus to discover and scrape the operator",
        lambda: (prom.api("targets"), prom.log_tail()),
    )
    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    stack.apply(_pool(OPEN_POOL, [{"days": ALL_DAYS, "start": "00:00", "end": "24:00"}]))
    stack.apply(
        _pool(CLOSED_POOL, [{"days": ALL_DAYS, "start": f"{hour:02d}:00", "end": f"{hour:02d}:30"}])
    )
    # the pools' series (the queue-wait histogram among them) are scraped before any job
    wait_for(
        lambda: (
            len(
                prom.query(
                    f"tidetune_queue_wait_seconds_count{{pool=~'{OPEN_POOL}|{CLOSED_POOL}'}}"
                )
            )
            == 2
        ),
        30,
        "Prometheus to scrape both pools' series",
        lambda: prom.query("tidetune_queue_wait_seconds_count"),
    )
    train_uri = stack.train_uri()
    stack.apply(
        tiny_job(
            DONE_JOB,
            NS,
            train_uri,
            steps=8,
            every=4,
            resources=ONE_GPU,
            scheduling={"pool": OPEN_POOL},
        )
    )
    stack.apply(
        tiny_job(WAITING_JOB, NS, train_uri, resources=ONE_GPU, scheduling={"pool": CLOSED_POOL})
    )
    st = stack.wait_phase(NS, DONE_JOB, "Succeeded", "Failed", timeout=420)
    assert st["phase"] == "Succeeded", st.get("message")
    assert stack.status(NS, WAITING_JOB)["phase"] == "Queued"
    # a failure after the namespace's counters exist, so increase() sees it
    too_big = {"nodes": 2, "gpusPerNode": POOL_GPUS}  # twice what the pool has
    stack.apply(
        tiny_job(FAILED_JOB, NS, train_uri, resources=too_big, scheduling={"pool": CLOSED_POOL})
    )
    failed = stack.wait_phase(NS, FAILED_JOB, "Failed", timeout=60)
    reason = next(c["reason"] for c in failed["conditions"] if c["type"] == "Failed")
    assert reason == "PoolTooSmall", failed
    # Prometheus has the final state, and a few samples of it (wait_for wants None/False,
    # not an empty list, for "not yet")
    final = {"Succeeded": "1", "Queued": "1", "Failed": "1"}
    wait_for(
        lambda: (
            {
                r["metric"]["phase"]: r["value"][1]
                for r in prom.query(f'tidetune_jobs{{namespace="{NS}"}} > 0')
            }
            == final
        ),
        30,
        "Prometheus to see the final phase counts",
        lambda: prom.query(f'tidetune_jobs{{namespace="{NS}"}}'),
    )
    wait_for(
        lambda: (
            len(
                prom.query(
                    f'count_over_time(tidetune_job_info{{namespace="{NS}", '
                    'phase=~"Succeeded|Queued|Failed"}[1m]) >= 3'
                )
            )
            == 3
        ),
        30,
        "Prometheus to scrape the final phases a few times",
        lambda: prom.query("tidetune_job_info"),
    )


def _variables(dashboard: dict[str, Any]) -> dict[str, str]:
    values = {"namespace": NS, "pool": OPEN_POOL, "job": DONE_JOB, **WINDOW_VALUES}
    declared = {v["name"] for v in dashboard["templating"]["list"]} - {"datasource"}
    assert declared <= set(values), f"the test does not fill in {declared - set(values)}"
    return values


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def test_every_panel_query_returns_data(observed: Observed, dashboard: dict[str, Any]) -> None:
    values = _variables(dashboard)
    empty, nan = [], []
    count = 0
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], values)
            result = observed.prometheus.query(expr)
            count += 1
            where = f"{panel['title']!r} {target['refId']}: {expr}"
            if panel.get("description", "").startswith("GRPO/PPO jobs only"):
                # the lab's $job is an SFT job: it must report no reward and no KL
                if result:
                    nan.append(f"{where} -> {result} (an SFT job reported an RL metric)")
                continue
            if not result:
                empty.append(where)
            elif any(math.isnan(v) for v in _numbers(result)):
                nan.append(f"{where} -> {result}")
    assert count >= 20
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert not nan, "queries answering NaN:\n" + "\n".join(nan)


def test_template_variables_list_the_lab_objects(
    observed: Observed, dashboard: dict[str, Any]
) -> None:
    prom = observed.prometheus
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    found: dict[str, set[str]] = {}
    for name in ("namespace", "pool", "job"):
        query = substitute(variable_query(variables[name]), {"namespace": NS})
        # label_values(<selector>, <label>) is Grafana's; Prometheus answers it as label values
        selector, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found[name] = set(prom.api(f"label/{label}/values", **{"match[]": selector}))
    assert NS in found["namespace"]
    assert {OPEN_POOL, CLOSED_POOL} <= found["pool"]
    assert {DONE_JOB, WAITING_JOB, FAILED_JOB} <= found["job"]


def test_panel_values_tell_what_happened(observed: Observed, dashboard: dict[str, Any]) -> None:
    values = _variables(dashboard)
    by_title = {p["title"]: p for p in panels(dashboard)}

    def ask(title: str, ref: str = "A", **overrides: str) -> list[dict[str, Any]]:
        target = next(t for t in by_title[title]["targets"] if t["refId"] == ref)
        return observed.prometheus.query(substitute(target["expr"], {**values, **overrides}))

    phases = {r["metric"]["phase"]: float(r["value"][1]) for r in ask("Jobs by phase (now)")}
    assert phases == {"Succeeded": 1, "Queued": 1, "Failed": 1}, phases
    assert _numbers(ask("Failed jobs in range"))[0] >= 0.5
    assert _numbers(ask("Progress")) == [1.0]
    assert _numbers(ask("Loss (train / eval)", "A"))[0] > 0
    assert _numbers(ask("Loss (train / eval)", "B"))[0] > 0
    assert _numbers(ask("Tokens per second"))[0] > 0
    (phase,) = ask("Phase")
    assert phase["metric"] == {"phase": "Succeeded", "pool": OPEN_POOL, "method": "sft"}
    waiting = {
        r["metric"]["finetunejob"]: float(r["value"][1]) for r in ask("Longest-waiting jobs")
    }
    assert set(waiting) == {WAITING_JOB} and waiting[WAITING_JOB] > 0
    p50 = _numbers(ask("Queue wait p50 / p95"))
    assert p50 and 0 <= p50[0] <= 10, p50  # admitted at once: within the first bucket
    assert _numbers(ask("Window open", pool=OPEN_POOL)) == [1.0]
    assert _numbers(ask("Window open", pool=CLOSED_POOL)) == [0.0]
    assert _numbers(ask("Queued jobs", pool=CLOSED_POOL)) == [1.0]
    assert _numbers(ask("GPUs in use vs capacity", "B", pool=OPEN_POOL)) == [float(POOL_GPUS)]
    harvested = {
        r["metric"]["pool"]: float(r["value"][1])
        for r in ask("Harvested GPU-hours by pool", pool=".*")
    }
    assert "" not in harvested and harvested[OPEN_POOL] > 0, harvested  # 1 GPU for seconds
    latency = _numbers(ask("Reconcile latency p50 / p99", "B"))
    assert latency and all(0 < v < 10 for v in latency), latency


def test_the_alert_rules_load_and_the_failure_fires(observed: Observed) -> None:
    prom = observed.prometheus
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 5
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

    def failed_alert() -> list[dict[str, Any]]:
        return [
            a
            for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "TideTuneJobFailed"
            and a["labels"].get("namespace") == NS
            and a["state"] == "firing"
        ]

    (alert,) = wait_for(
        lambda: failed_alert() or None, 15, "TideTuneJobFailed to fire for namespace obs"
    )
    assert alert["labels"]["severity"] == "warning"
    assert f"namespace {NS}" in alert["annotations"]["summary"]
    quiet = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]} - {"TideTuneJobFailed"}
    assert "TideTuneOperatorMetricsAbsent" not in quiet


def test_deleting_a_job_removes_its_series(observed: Observed) -> None:
    """Run last: it deletes a job (the other tests read them)."""
    observed.stack.kubectl("-n", NS, "delete", "ftj", WAITING_JOB)

    def exposition() -> str:
        with urllib.request.urlopen(observed.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    wait_for(
        lambda: f'finetunejob="{WAITING_JOB}"' not in exposition(),
        30,
        f"the operator to drop {WAITING_JOB}'s series",
    )
    text = exposition()
    assert f'finetunejob="{DONE_JOB}"' in text
