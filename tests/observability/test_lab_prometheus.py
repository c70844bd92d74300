"""The dashboard and the alerts against a real Prometheus scraping the lab's operator.

One lab (API emulator, S3, the Kubeflow stand-in, the operator as ``kopf run``) and one
Debian ``prometheus`` on a free loopback port, scraping the operator every second and
loading ``alerts.yaml``. In namespace ``obs``: an IdlePool open all week and one whose only
window is hours away; a tiny job in the open pool trains to Succeeded, one waits for the
closed pool, one fails (it needs more GPUs than its pool has; a missing Secret would only
make it wait). Then every dashboard query, with the template variables filled in, must
return data through Prometheus' HTTP API.
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

from tests.e2e.conftest import TRAIN_DATA, Stack, tiny_job, wait_for
from tests.lab.lab import REPO_ROOT
from tests.lab.stack import build_lab
from tests.observability.conftest import ALERTS, panels, substitute, variable_query
from tidetune.torchrun_nodes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NS = "obs"
OPEN_POOL = "open-all-week"
CLOSED_POOL = "closed-now"
DONE_JOB = "curve"
WAITING_JOB = "waiting"
FAILED_JOB = "broken"
WINDOW_VALUES = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Prometheus:
    """A ``prometheus`` process on 127.0.0.1 with its data in ``workdir`` (stopped by ``stop``)."""

    def __init__(self, binary: str, workdir: pathlib.Path, scrape: str, rules: pathlib.Path):
        target = urllib.parse.urlsplit(scrape)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "tidetune-operator",
                    "metrics_path": target.path or "/metrics",
                    "static_configs": [{"targets": [target.netloc]}],
                }
            ],
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
    metrics_url: str


def _pool(name: str, windows: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "idlepool.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    doc["spec"].update(gpus=8, timezone="UTC", windows=windows)
    return doc


ALL_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
#: a job in a pool takes at least one GPU (the trainer runs on CPU in the lab all the same)
ONE_GPU = {"nodes": 1, "gpusPerNode": 1}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("obs-lab")
    lab = build_lab(workdir / "lab", grace_seconds=30)
    lab.start()
    prometheus: Prometheus | None = None
    try:
        stack = Stack(lab)
        metrics_url = lab.info()["metricsUrl"]
        assert metrics_url, "the lab's operator serves no metrics"
        prometheus = Prometheus(prometheus_bin, workdir / "prometheus", metrics_url, ALERTS)
        obs = Observed(stack, prometheus, metrics_url)
        _run_the_scenario(obs)
        yield obs
    finally:
        if prometheus is not None:
            prometheus.stop()
        lab.stop()


def _run_the_scenario(obs: Observed) -> None:
    stack, prom = obs.stack, obs.prometheus
    stack.namespace(NS)
    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    stack.apply(_pool(OPEN_POOL, [{"days": ALL_DAYS, "start": "00:00", "end": "24:00"}]))
    stack.apply(
        _pool(CLOSED_POOL, [{"days": ALL_DAYS, "start": f"{hour:02d}:00", "end": f"{hour:02d}:30"}])
    )
    # the pools' series (the queue-wait histogram among them) are scraped before any job
    wait_for(
        lambda: (
            len(prom.query("tidetune_queue_wait_seconds_count{pool=~'open-all-week|closed-now'}"))
            == 2
        ),
        30,
        "Prometheus to scrape both pools' series",
        lambda: prom.query("tidetune_queue_wait_seconds_count"),
    )
    train_uri = stack.put("data/arithmetic-sft.jsonl", TRAIN_DATA.read_bytes())
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
    st = stack.wait_phase(NS, DONE_JOB, "Succeeded", "Failed", timeout=150)
    assert st["phase"] == "Succeeded", st.get("message")
    assert stack.status(NS, WAITING_JOB)["phase"] == "Queued"
    # a failure after the namespace's counters exist, so increase() sees it
    too_big = {"nodes": 2, "gpusPerNode": 8}  # the pools have 8 GPUs
    stack.apply(
        tiny_job(FAILED_JOB, NS, train_uri, resources=too_big, scheduling={"pool": CLOSED_POOL})
    )
    stack.wait_phase(NS, FAILED_JOB, "Failed", timeout=60)
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


def _exposition(observed: Observed, prefix: str) -> list[str]:
    with urllib.request.urlopen(observed.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


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
    assert _numbers(ask("GPUs in use vs capacity", "B", pool=OPEN_POOL)) == [8.0]
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
