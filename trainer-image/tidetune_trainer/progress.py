"""Progress and metrics: ``metrics.jsonl`` and ``progress.json`` in the run location, and
Prometheus metrics, all written by rank 0 only.

``<run>/metrics.jsonl`` — one JSON object per logging step (and per evaluation)::

    {"step": 12, "epoch": 0.6, "loss": 2.31, "evalLoss": 2.40, "learningRate": 9.7e-05,
     "gradNorm": 0.84, "tokens": 24576, "tokensPerSecond": 5120.4,
     "time": "2025-01-01T12:00:00Z"}

``evalLoss`` appears on lines where an evaluation ran. GRPO/PPO lines add ``reward``
(the weighted total's mean), ``rewardStd``, ``rewards/<i>`` (rule *i* of
``spec.rl.rewards``, before its weight), ``kl``, ``entropy``, ``completionLength``,
``clipFraction``, ``rolloutTimeShare`` (and ``zeroStdFraction``, ``valueLoss``…).
On resume, lines past the resumed step are dropped first, so the file always describes
one consistent trajectory.

``<run>/progress.json`` — the current state, rewritten atomically on every logging step::

    {"state": "running", "step": 12, "totalSteps": 100, "epoch": 0.6, "percent": 12.0,
     "trainedTokens": 24576, "eta": "…", "updatedAt": "…", "metrics": {…},
     "checkpoints": [{"step": 10, "uri": "…", "time": "…"}], "message": null}

``state`` is one of ``starting``, ``running``, ``checkpointing``, ``preempted``,
``exporting``, ``succeeded``, ``failed``. The documents' formats are
:mod:`tidetune.contract`'s; the file names :mod:`tidetune.layout`'s.

Prometheus (``--metrics-port N``; 0 or unset disables; bound to ``TIDETUNE_METRICS_ADDR``,
default ``0.0.0.0``): ``tidetune_trainer_step``, ``…_total_steps``, ``…_epoch``,
``…_progress_ratio``, ``…_loss``, ``…_eval_loss``, ``…_learning_rate``,
``…_grad_norm``, ``…_trained_tokens_total``, ``…_tokens_per_second``,
``…_eta_seconds``, ``…_step_duration_seconds``, ``…_checkpoints_total``,
``…_checkpoint_save_seconds``, ``…_preemptions_total``; for GRPO/PPO ``…_reward``,
``…_reward_std``, ``…_kl``, ``…_entropy``, ``…_completion_length``, ``…_clip_fraction``,
``…_rollout_time_share`` and ``…_rule_reward{rule="<i>"}``; labelled with the job's
``ftj_namespace`` and ``ftj_name``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from tidetune.contract import ArtifactStatus, CheckpointRecord, ProgressDocument, RunStateName

# the names the operator reads, re-exported for the trainer's modules
from tidetune.layout import ESTIMATE_FILE as ESTIMATE_FILE
from tidetune.layout import METRICS_FILE as METRICS_FILE
from tidetune.layout import PROGRESS_FILE as PROGRESS_FILE
from tidetune.storage import ObjectStore

log = logging.getLogger(__name__)

#: progress.json's ``state`` values (the contract's)
STATES = tuple(str(s) for s in RunStateName)


def iso(ts: float | None = None) -> str:
    """A UNIX time as RFC 3339 UTC."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def _finite(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


@dataclass
class PrometheusExporter:
    """The trainer's Prometheus metrics on their own registry and HTTP server."""

    port: int
    namespace: str = ""
    name: str = ""
    addr: str = field(default_factory=lambda: os.environ.get("TIDETUNE_METRICS_ADDR", "0.0.0.0"))

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("ftj_namespace", "ftj_name")
        lv = (self.namespace, self.name)

        def g(n: str, doc: str) -> Any:
            return Gauge(f"tidetune_trainer_{n}", doc, labels, registry=self.registry).labels(*lv)

        def c(n: str, doc: str) -> Any:
            return Counter(f"tidetune_trainer_{n}", doc, labels, registry=self.registry).labels(*lv)

        self.step = g("step", "Optimizer steps done.")
        self.total_steps = g("total_steps", "Optimizer steps the run will take.")
        self.epoch = g("epoch", "Fractional epoch.")
        self.progress = g("progress_ratio", "step / total steps (0–1).")
        self.loss = g("loss", "Latest training loss.")
        self.eval_loss = g("eval_loss", "Latest evaluation loss.")
        self.lr = g("learning_rate", "Current learning rate.")
        self.grad_norm = g("grad_norm", "Latest gradient norm (before clipping).")
        self.tokens = c("trained_tokens", "Real (non-padding) tokens trained on.")
        self.tps = g("tokens_per_second", "Recent training throughput in real tokens per second.")
        self.eta = g("eta_seconds", "Estimated seconds until training ends.")
        # GRPO / PPO
        self.reward = g("reward", "Latest mean reward (Σ weight × rule) of sampled completions.")
        self.reward_std = g("reward_std", "Standard deviation of the latest rewards.")
        self.kl = g("kl", "Latest mean KL divergence to the reference model.")
        self.entropy = g("entropy", "Latest mean token entropy of the policy.")
        self.completion_length = g("completion_length", "Latest mean completion length (tokens).")
        self.clip_fraction = g(
            "clip_fraction", "Share of completion tokens whose ratio was clipped."
        )
        self.rollout_share = g(
            "rollout_time_share", "Share of the latest step spent sampling and scoring."
        )
        self.rule_reward = Gauge(
            "tidetune_trainer_rule_reward",
            "Latest mean score of reward rule <rule> (spec.rl.rewards index), before its weight.",
            (*labels, "rule"),
            registry=self.registry,
        )
        self._lv = lv
        self.checkpoints = c("checkpoints", "Checkpoints written by this process.")
        self.preemptions = c("preemptions", "Stops on SIGTERM/suspend with a checkpoint.")
        self.step_seconds = Histogram(
            "tidetune_trainer_step_duration_seconds",
            "Wall-clock seconds per optimizer step.",
            labels,
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        ).labels(*lv)
        self.ckpt_seconds = Histogram(
            "tidetune_trainer_checkpoint_save_seconds",
            "Wall-clock seconds per checkpoint save.",
            labels,
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        ).labels(*lv)
        self._server: Any = None

    def start(self) -> None:
        """Serve ``/metrics`` on ``addr:port``."""
        from prometheus_client import start_http_server

        self._server = start_http_server(self.port, addr=self.addr, registry=self.registry)

    def stop(self) -> None:
        if isinstance(self._server, tuple):
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._server = None


class ProgressReporter:
    """Writes metrics and progress for rank 0; every method is a no-op on other ranks."""

    def __init__(
        self,
        store: ObjectStore,
        run_key: str,
        *,
        enabled: bool,
        total_steps: int,
        steps_per_epoch: int,
        metrics_port: int | None = None,
        job_namespace: str = "",
        job_name: str = "",
    ) -> None:
        self.store = store
        self.run_key = run_key
        self.enabled = enabled
        self.total_steps = total_steps
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.lines: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.checkpoints: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []
        self.state = "starting"
        self.step = 0
        self.trained_tokens = 0
        # this trainer run: the operator tells a pod replaced in place (its node lost) by a
        # new session of the same launched job's pod
        self.session = uuid.uuid4().hex[:12]
        self.pod = os.environ.get("HOSTNAME", "")
        self.resumed_from: int | None = None
        self.message: str | None = None
        #: the trainer's exit code once it ends (:mod:`tidetune.exitcodes`): the operator
        #: decides from it whether a failed attempt may be retried
        self.exit_code: int | None = None
        self._rate_window: list[tuple[float, int, int]] = []  # (time, step, tokens)
        self.prom: PrometheusExporter | None = None
        if enabled and metrics_port:
            self.prom = PrometheusExporter(metrics_port, job_namespace, job_name)
            self.prom.start()
            self.prom.total_steps.set(total_steps)

    def _key(self, name: str) -> str:
        return ObjectStore.join(self.run_key, name)

    # ------------------------------------------------------------------ lifecycle

    def resume(self, step: int, trained_tokens: int, checkpoints: list[dict[str, Any]]) -> None:
        self.resumed_from = step
        """Continue a run: keep the metric lines up to ``step``, drop later ones."""
        self.step, self.trained_tokens = step, trained_tokens
        self.checkpoints = list(checkpoints)
        if not self.enabled:
            return
        key = self._key(METRICS_FILE)
        if self.store.exists(key):
            kept = []
            for raw in self.store.read_text(key).splitlines():
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by a kill
                if int(obj.get("step", 0)) <= step:
                    kept.append(obj)
            self.lines = kept
            for obj in kept:
                self._remember(obj)
            self._flush_metrics()
        if self.prom:
            self.prom.tokens.inc(trained_tokens)
            self.prom.step.set(step)

    def start(self, step: int = 0, trained_tokens: int = 0) -> None:
        self.step, self.trained_tokens = step, trained_tokens
        self._rate_window = [(time.monotonic(), step, trained_tokens)]
        self.set_state("running")

    def set_state(
        self, state: str, message: str | None = None, *, exit_code: int | None = None
    ) -> None:
        """Record the run's state (one of :data:`STATES`; ``failed`` with the trainer's
        exit code) and rewrite progress.json."""
        assert state in STATES, state
        self.state = state
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        self.write_progress()

    def close(self) -> None:
        if self.prom:
            self.prom.stop()
            self.prom = None

    # ------------------------------------------------------------------ events

    def _remember(self, obj: dict[str, Any]) -> None:
        from tidetune.layout import STATUS_METRICS

        for src, dst in STATUS_METRICS.items():
            if obj.get(src) is not None:
                self.latest[dst] = obj[src]

    def epoch_of(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def log_step(
        self,
        step: int,
        *,
        loss: float,
        learning_rate: float,
        grad_norm: float | None,
        trained_tokens: int,
        step_seconds: float | None = None,
        eval_loss: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one line to metrics.jsonl and refresh progress.json and Prometheus."""
        now = time.monotonic()
        self.step, self.trained_tokens = step, trained_tokens
        self._rate_window.append((now, step, trained_tokens))
        self._rate_window = self._rate_window[-20:]
        t0, _, tok0 = self._rate_window[0]
        tps = (
            (trained_tokens - tok0) / (now - t0)
            if now > t0 and len(self._rate_window) > 1
            else None
        )
        line: dict[str, Any] = {
            "step": step,
            "epoch": self.epoch_of(step),
            "loss": _finite(loss),
            "learningRate": learning_rate,
            "gradNorm": _finite(grad_norm),
            "tokens": trained_tokens,
            "tokensPerSecond": round(tps, 2) if tps is not None else None,
            "time": iso(),
        }
        if eval_loss is not None:
            line["evalLoss"] = _finite(eval_loss)
        if extra:
            line.update(extra)
        if not self.enabled:
            return line
        self.lines.append(line)
        self._remember(line)
        self._append_metrics(line)
        self.write_progress()
        log.info(
            "step %d/%d loss %s lr %.3g%s",
            step,
            self.total_steps,
            f"{line['loss']:.4f}" if line["loss"] is not None else "--",
            learning_rate,
            f" {line['tokensPerSecond']:,.0f} tok/s" if line["tokensPerSecond"] else "",
        )
        if self.prom:
            p = self.prom
            p.step.set(step)
            p.epoch.set(line["epoch"])
            p.progress.set(step / self.total_steps if self.total_steps else 0)
            if line["loss"] is not None:
                p.loss.set(line["loss"])
            if eval_loss is not None:
                p.eval_loss.set(eval_loss)
            p.lr.set(learning_rate)
            for gauge, key in (
                (p.reward, "reward"),
                (p.reward_std, "rewardStd"),
                (p.kl, "kl"),
                (p.entropy, "entropy"),
                (p.completion_length, "completionLength"),
                (p.clip_fraction, "clipFraction"),
                (p.rollout_share, "rolloutTimeShare"),
            ):
                if isinstance(line.get(key), int | float):
                    gauge.set(float(line[key]))
            for key, value in line.items():
                if key.startswith("rewards/") and isinstance(value, int | float):
                    p.rule_reward.labels(*p._lv, key.removeprefix("rewards/")).set(float(value))
            if line["gradNorm"] is not None:
                p.grad_norm.set(line["gradNorm"])
            inc = trained_tokens - int(p.tokens._value.get())
            if inc > 0:
                p.tokens.inc(inc)
            if tps is not None:
                p.tps.set(tps)
            eta = self.eta_seconds()
            if eta is not None:
                p.eta.set(eta)
            if step_seconds is not None:
                p.step_seconds.observe(step_seconds)
        return line

    def log_eval(self, step: int, eval_loss: float) -> None:
        """Attach an evaluation to the line of ``step`` (or add a line for it)."""
        if not self.enabled:
            return
        log.info("step %d eval loss %.4f", step, eval_loss)
        if self.lines and self.lines[-1]["step"] == step:
            self.lines[-1]["evalLoss"] = _finite(eval_loss)
            self._remember(self.lines[-1])
            self._flush_metrics()
        else:
            line = {
                "step": step,
                "epoch": self.epoch_of(step),
                "evalLoss": _finite(eval_loss),
                "tokens": self.trained_tokens,
                "time": iso(),
            }
            self.lines.append(line)
            self._remember(line)
            self._append_metrics(line)
        if self.prom:
            self.prom.eval_loss.set(eval_loss)
        self.write_progress()

    def log_checkpoint(
        self, step: int, uri: str, when: str, seconds: float, kept: list[dict[str, Any]]
    ) -> None:
        self.checkpoints = kept
        if self.prom:
            self.prom.checkpoints.inc()
            self.prom.ckpt_seconds.observe(seconds)
        self.write_progress()

    def log_preempted(self) -> None:
        if self.prom:
            self.prom.preemptions.inc()

    # ------------------------------------------------------------------ files

    def eta_seconds(self) -> float | None:
        if len(self._rate_window) < 2:
            return None
        t0, s0, _ = self._rate_window[0]
        t1, s1, _ = self._rate_window[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        per_step = (t1 - t0) / (s1 - s0)
        return max(0.0, (self.total_steps - self.step) * per_step)

    def progress(self) -> ProgressDocument:
        eta = self.eta_seconds()
        eta_time = None
        if eta is not None and self.state == "running":
            eta_time = (
                (datetime.now(UTC) + timedelta(seconds=eta))
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z")
            )
        doc: ProgressDocument = {
            "state": self.state,
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": self.epoch_of(self.step),
            "percent": round(100.0 * self.step / self.total_steps, 2) if self.total_steps else 0.0,
            "trainedTokens": self.trained_tokens,
            "eta": eta_time,
            "etaSeconds": round(eta, 1) if eta is not None else None,
            "updatedAt": iso(),
            "metrics": dict(self.latest),
            # the checkpoint manager's and the exporter's records, in the contract's shape
            "checkpoints": cast(list[CheckpointRecord], list(self.checkpoints)),
            "artifacts": cast(list[ArtifactStatus], list(self.artifacts)),
            "message": self.message,
            "session": self.session,
            "pod": self.pod,
            "resumedFrom": self.resumed_from,
        }
        if self.exit_code is not None:
            doc["exitCode"] = self.exit_code
        return doc

    def write_progress(self) -> None:
        if self.enabled:
            self.store.write_text(self._key(PROGRESS_FILE), json.dumps(self.progress(), indent=1))

    def _append_metrics(self, line: dict[str, Any]) -> None:
        from tidetune.storage import LocalStore

        if isinstance(self.store, LocalStore):
            path = self.store.path(self._key(METRICS_FILE))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        else:
            self._flush_metrics()  # object stores cannot append: rewrite the whole file

    def _flush_metrics(self) -> None:
        text = "".join(json.dumps(obj) + "\n" for obj in self.lines)
        self.store.write_text(self._key(METRICS_FILE), text)
