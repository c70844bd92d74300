"""metrics.jsonl, progress.json and the Prometheus endpoint of rank 0."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tidetune.storage import open_store
from tidetune_trainer.progress import ProgressReporter

from .conftest import METRICS_LINE_KEYS

pytestmark = pytest.mark.trainer


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_progress_and_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDETUNE_METRICS_ADDR", "127.0.0.1")
    store, key = open_store(f"file://{tmp_path}/run")
    port = _port()
    rep = ProgressReporter(
        store,
        key,
        enabled=True,
        total_steps=10,
        steps_per_epoch=5,
        metrics_port=port,
        job_namespace="ns",
        job_name="job",
    )
    try:
        rep.start()
        for step in range(1, 5):
            rep.log_step(
                step,
                loss=3.0 - step / 10,
                learning_rate=1e-3,
                grad_norm=0.5,
                trained_tokens=100 * step,
                step_seconds=0.1,
            )
        rep.log_eval(4, 2.5)
        lines = [
            json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        ]
        assert [m["step"] for m in lines] == [1, 2, 3, 4]
        assert lines[-1]["evalLoss"] == 2.5 and lines[-1]["epoch"] == 0.8
        assert set(lines[0]) >= METRICS_LINE_KEYS
        p = json.loads((tmp_path / "run" / "progress.json").read_text())
        assert p["step"] == 4 and p["totalSteps"] == 10 and p["percent"] == 40.0
        assert p["trainedTokens"] == 400 and p["metrics"]["evalLoss"] == 2.5
        assert set(p) >= {
            "step",
            "totalSteps",
            "epoch",
            "trainedTokens",
            "eta",
            "percent",
            "updatedAt",
        }
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        labels = 'ftj_name="job",ftj_namespace="ns"'
        assert f"tidetune_trainer_step{{{labels}}} 4.0" in body
        assert f"tidetune_trainer_total_steps{{{labels}}} 10.0" in body
        assert f"tidetune_trainer_trained_tokens_total{{{labels}}} 400.0" in body
        assert f"tidetune_trainer_eval_loss{{{labels}}} 2.5" in body
        assert "tidetune_trainer_step_duration_seconds_count" in body
    finally:
        rep.close()

    # a resumed run drops lines past its checkpoint (here: step 2)
    rep2 = ProgressReporter(store, key, enabled=True, total_steps=10, steps_per_epoch=5)
    rep2.resume(2, 200, [])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    store, key = open_store(f"file://{tmp_path}/run")
    rep = ProgressReporter(
        store, key, enabled=False, total_steps=3, steps_per_epoch=3, metrics_port=_port()
    )
    rep.start()
    rep.log_step(1, loss=1.0, learning_rate=0.1, grad_norm=1.0, trained_tokens=5)
    assert rep.prom is None
    assert not (tmp_path / "run").exists()


def test_a_failure_during_training_records_the_exit_code_for_the_operator(
    tmp_path: Path,
) -> None:
    """A run that fails once the reporter is up (a reward function raising mid-run) says
    its exit code in progress.json, as one failing before it does: without it the operator
    took bad input (65) for a crash and retried it."""
    from types import SimpleNamespace

    from tidetune import exitcodes
    from tidetune.contract import RunState
    from tidetune_trainer.main import _record_failure

    run_uri = f"file://{tmp_path}/run"
    store, key = open_store(run_uri)
    rep = ProgressReporter(store, key, enabled=True, total_steps=10, steps_per_epoch=5)
    rep.start()
    _record_failure(
        SimpleNamespace(reporter=rep),  # type: ignore[arg-type]
        run_uri,
        exitcodes.BAD_INPUT,
        "spec.rl.rewards[1] (r/reward.py:score): KeyError: 'answer'",
    )
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["state"] == "failed" and progress["exitCode"] == exitcodes.BAD_INPUT
    state = RunState.from_progress(progress)
    assert exitcodes.classify(state.exit_code or 0) is exitcodes.Outcome.BAD_INPUT
