"""What users see of an RL run: metrics.jsonl keys, status.metrics, Prometheus series."""

from __future__ import annotations

import json
from pathlib import Path

from tidetune.jobs.localstatus import final_job
from tidetune.storage import LocalStore
from tidetune_operator import metrics as operator_metrics
from tidetune_trainer.loop import rl_metrics
from tidetune_trainer.progress import ProgressReporter, PrometheusExporter

LINE = {
    "reward": 0.75,
    "rewardStd": 0.25,
    "rewards/0": 1.0,
    "rewards/1": 0.5,
    "kl": 0.01,
    "entropy": 3.5,
    "completionLength": 9.0,
    "clipFraction": 0.125,
    "rolloutTimeShare": 0.8,
}


def test_rl_metrics_from_the_step_means() -> None:
    out = rl_metrics(
        {"reward": 0.5, "rewardSq": 0.5, "rolloutSeconds": 3.0, "rewardSeconds": 0.3, "kl": 0.1},
        step_seconds=4.0,
    )
    assert out == {
        "reward": 0.5,
        "rewardStd": 0.5,  # E[r²] − E[r]² = 0.25
        "kl": 0.1,
        "rolloutTimeShare": 0.75,
        "rewardTimeShare": 0.075,
    }


def test_status_metrics_and_prometheus_series(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "file://" + str(tmp_path))
    rep = ProgressReporter(store, "run", enabled=True, total_steps=4, steps_per_epoch=2)
    rep.prom = PrometheusExporter(0, "team-a", "g")  # the registry, without its server
    rep.start()
    rep.log_step(
        1, loss=0.1, learning_rate=1e-3, grad_norm=0.5, trained_tokens=100, extra=dict(LINE)
    )
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k: line[k] for k in LINE} == LINE
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    m = progress["metrics"]
    assert (m["reward"], m["rewardStd"], m["kl"], m["entropy"]) == (0.75, 0.25, 0.01, 3.5)
    assert (m["completionLength"], m["clipFraction"]) == (9.0, 0.125)
    reg = rep.prom.registry
    labels = {"ftj_namespace": "team-a", "ftj_name": "g"}
    assert reg.get_sample_value("tidetune_trainer_reward", labels) == 0.75
    assert reg.get_sample_value("tidetune_trainer_kl", labels) == 0.01
    assert reg.get_sample_value("tidetune_trainer_rollout_time_share", labels) == 0.8
    assert reg.get_sample_value("tidetune_trainer_rule_reward", {**labels, "rule": "1"}) == 0.5
    # tidetune run's final status, and the operator's per-job series
    body = {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "g", "namespace": "team-a"},
        "spec": {
            "method": "grpo",
            "baseModel": {"uri": "builtin://tiny-llama"},
            "data": {"train": {"uri": "file:///d.jsonl"}},
            "rl": {"rewards": [{"preset": "exact-match"}]},
        },
    }
    status = final_job(body, "Running", [], None, None, progress)["status"]
    assert status["metrics"]["reward"] == 0.75 and status["metrics"]["clipFraction"] == 0.125
    operator_metrics.observe_job("team-a", "g", status, "", "grpo")
    sample = operator_metrics.REGISTRY.get_sample_value
    assert sample("tidetune_job_reward", {"namespace": "team-a", "finetunejob": "g"}) == 0.75
    assert sample("tidetune_job_kl", {"namespace": "team-a", "finetunejob": "g"}) == 0.01
    operator_metrics.forget_job("team-a", "g")
    assert sample("tidetune_job_reward", {"namespace": "team-a", "finetunejob": "g"}) is None
