"""The training loop every recipe shares: data order, accumulation, evaluation, logging,
checkpoints, preemption and exact resume.

A recipe supplies an :class:`Objective` (how to batch rows and what a batch's summed
loss is); this module does everything else.

Loss normalisation. Each optimizer step's loss is ``Σ loss over all loss units of the
step / number of loss units`` across every micro-batch and every rank (a loss unit is a
token with weight > 0 for SFT/CPT, a pair for DPO). The unit count is all-reduced
before the backward passes, so each micro-batch's loss is scaled by ``world_size /
units`` (DDP and DeepSpeed average gradients over ranks), and the result does not
depend on how tokens fall into micro-batches or ranks — the packed and unpacked runs
of the same samples optimise the same objective.

Data order. Rows are permuted per epoch by a generator seeded with ``seed + epoch``
(never the global RNG); micro-batch ``m`` of an epoch gives rank ``r`` the rows
``order[(m·W + r)·B : (m·W + r + 1)·B]``. An epoch has ``ceil(rows / (B·W·GAS))`` steps;
its order wraps around to fill the last step. The data position in a checkpoint is
``(epoch, micro_index)``, so resuming skips straight to the next micro-batch. An RL
objective may take more micro-batches than ``gradientAccumulationSteps`` in a step
(dapo's dynamic sampling asks for the next ones while it lacks groups with a signal):
they are the next ones in the same order, across the epoch's end, and the position
advances past them.

Stopping. A SIGTERM/SIGINT (see :class:`StopFlag`) or ``TIDETUNE_STOP_AT_STEP=N`` makes
every rank agree (all-reduce) at the next step boundary to write a checkpoint and raise
:class:`Preempted`.

Test facility. ``TIDETUNE_STEP_DELAY_SECONDS=S`` sleeps S seconds after every optimizer
step. It changes timing only, never the math: the lab sets it so that a job on the tiny
model lasts long enough to be suspended, preempted or reclaimed mid-run whatever the
speed of the machine.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tidetune_trainer.checkpoint import CheckpointManager, TrainerState
from tidetune_trainer.config import TrainConfig
from tidetune_trainer.engine import Engine
from tidetune_trainer.errors import CheckpointError, Preempted
from tidetune_trainer.progress import ProgressReporter

log = logging.getLogger(__name__)

STOP_AT_STEP_ENV = "TIDETUNE_STOP_AT_STEP"
STEP_DELAY_ENV = "TIDETUNE_STEP_DELAY_SECONDS"


class Objective(Protocol):
    """What a recipe contributes to the loop."""

    def collate(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Rows → a batch of tensors (on the CPU)."""

    def row_tokens(self, row: Any) -> int:
        """Real (non-padding) tokens a row makes the model process."""

    def units(self, batch: dict[str, torch.Tensor]) -> float:
        """Loss units in a batch (tokens with weight > 0, or pairs)."""

    def loss_sum(
        self, engine: Engine, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's summed loss (a scalar with grad) and summed extra metrics."""


class StopFlag:
    """Set by SIGTERM/SIGINT (installed with :meth:`install`) or by hand."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def install(self) -> None:
        """Catch SIGTERM and SIGINT: the loop checkpoints and stops at the next step."""

        def handler(signum: int, _frame: Any) -> None:
            if not self.requested:
                log.warning("received signal %d: will checkpoint and stop", signum)
            self.requested = True
            self.signal = signum

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request(self) -> None:
        self.requested = True


@dataclass
class DataOrder:
    """Deterministic, resumable assignment of rows to ranks and micro-batches."""

    rows: int
    seed: int
    world_size: int
    batch_size: int
    grad_accum: int

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        per_step = self.batch_size * self.world_size * self.grad_accum
        return max(1, math.ceil(self.rows / per_step))

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        perm = torch.randperm(self.rows, generator=g).tolist()
        need = self.micro_per_epoch * self.batch_size * self.world_size
        out: list[int] = []
        while len(out) < need:
            out.extend(perm[: need - len(out)])
        return out

    def micro_batch(self, order: list[int], micro: int, rank: int) -> list[int]:
        start = (micro * self.world_size + rank) * self.batch_size
        return order[start : start + self.batch_size]


def rl_metrics(means: dict[str, float], step_seconds: float) -> dict[str, float]:
    """The metrics an RL objective reports, from its per-step means: ``reward`` (weighted
    total), ``rewardStd``, ``rewards/<i>``, ``kl``, ``entropy``, ``completionLength``,
    ``clipFraction``, ``rolloutTimeShare`` (share of the step spent sampling and scoring)…"""
    out = {
        k: v for k, v in means.items() if k not in ("rewardSq", "rolloutSeconds", "rewardSeconds")
    }
    if "reward" in means and "rewardSq" in means:
        out["rewardStd"] = math.sqrt(max(0.0, means["rewardSq"] - means["reward"] ** 2))
    if "rolloutSeconds" in means and step_seconds > 0:
        # rolloutSeconds is averaged over ranks: each rank samples its own share
        out["rolloutTimeShare"] = min(1.0, means["rolloutSeconds"] / step_seconds)
    if "rewardSeconds" in means and step_seconds > 0:
        out["rewardTimeShare"] = min(1.0, means["rewardSeconds"] / step_seconds)
    return out


def changed_inputs(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """``field: was X, now Y`` for each base-model/data field that differs (a checkpoint
    from before inputs were recorded has none: only its fingerprint is compared)."""
    if not saved:
        return []
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, ""), now.get(key, "")
        if a != b:
            out.append(f"{key}: was {a or '(unset)'!s}, now {b or '(unset)'!s}")
    return out


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """maxSteps when set, else epochs × steps per epoch."""
    return cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch


@dataclass
class LoopResult:
    state: TrainerState
    losses: list[float] = field(default_factory=list)
    eval_loss: float | None = None


def evaluate(engine: Engine, objective: Objective, rows: Sequence[Any], batch_size: int) -> float:
    """Mean loss per unit over ``rows`` on all ranks (each rank runs the same number of
    forwards, as ZeRO-3 needs; padding rows weigh 0). NaN if there are no rows."""
    if not rows:
        return float("nan")
    w, r = engine.world_size, engine.rank
    per_rank = math.ceil(len(rows) / w)
    mine = list(range(r * per_rank, min(len(rows), (r + 1) * per_rank)))
    n_micro = max(1, math.ceil(per_rank / batch_size))
    total, units = 0.0, 0.0
    engine.train_mode(False)
    with torch.no_grad():
        for m in range(n_micro):
            idx = mine[m * batch_size : (m + 1) * batch_size]
            scale = 1.0
            if not idx:
                idx, scale = [0], 0.0
            batch = objective.collate([rows[i] for i in idx])
            with engine.forward_context():
                s, _ = objective.loss_sum(engine, batch)
            total += float(s.detach()) * scale
            units += objective.units(batch) * scale
    engine.train_mode(True)
    total, units = engine.all_reduce_sum([total, units])
    return total / units if units else float("nan")


class TrainingLoop:
    """Runs optimizer steps from the current :class:`TrainerState` to ``total_steps``.

    ``save_checkpoint(step_dir)`` is called (on every rank) to write the engine state and
    the exportable model into a checkpoint directory.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        engine: Engine,
        objective: Objective,
        train_rows: Sequence[Any],
        *,
        validation_rows: Sequence[Any] = (),
        checkpoints: CheckpointManager,
        reporter: ProgressReporter,
        stop: StopFlag,
        export_model: Callable[[Path], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.objective = objective
        self.train_rows = train_rows
        self.validation_rows = validation_rows
        self.ckpt = checkpoints
        self.reporter = reporter
        self.stop = stop
        self.export_model = export_model
        self.order = DataOrder(
            len(train_rows),
            cfg.seed,
            engine.world_size,
            cfg.batch_size,
            cfg.gradient_accumulation_steps,
        )
        self.total_steps = total_steps(cfg, self.order.steps_per_epoch)
        self.state = TrainerState(
            total_steps=self.total_steps,
            world_size=engine.world_size,
            fingerprint=cfg.fingerprint(),
            inputs=cfg.inputs_dict(),
        )
        stop_at = os.environ.get(STOP_AT_STEP_ENV)
        self.stop_at_step = int(stop_at) if stop_at and stop_at.strip().isdigit() else None
        try:
            self.step_delay = max(0.0, float(os.environ.get(STEP_DELAY_ENV) or 0.0))
        except ValueError:
            self.step_delay = 0.0

    # ------------------------------------------------------------------ resume

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns whether it resumed.
        Raises :class:`CheckpointError` if it was written by another setup."""
        t0 = time.monotonic()
        info = self.ckpt.latest()
        info = self.engine.broadcast_object(info)
        if info is None:
            return False
        local, state = self.ckpt.fetch(info)
        if state.world_size != self.engine.world_size:
            raise CheckpointError(
                f"{info.uri}: written by {state.world_size} process(es), this run has "
                f"{self.engine.world_size}; resume with the same resources (nodes × "
                "gpusPerNode / --nproc) or delete the run's checkpoints to start over"
            )
        changed = changed_inputs(state.inputs, self.cfg.inputs_dict())
        if changed:
            raise CheckpointError(
                f"{info.uri}: written for other data or another base model ("
                + "; ".join(changed)
                + "). Resuming would continue a different run: rerun the original spec, or "
                "delete the run's checkpoints (or use a new run location) to start over"
            )
        if state.fingerprint and state.fingerprint != self.cfg.fingerprint():
            raise CheckpointError(
                f"{info.uri}: written for a different spec (method, tuning, data or "
                "hyperparameters changed); rerun the original spec, or delete the run's "
                "checkpoints to start over"
            )
        self.engine.load_state(local / "state")
        self.ckpt.release(info)
        state.total_steps = self.total_steps
        self.state = state
        kept = [{"step": c.step, "uri": c.uri, "time": c.time} for c in self.ckpt.complete()]
        self.reporter.resume(state.step, state.trained_tokens, kept)
        log.info("resumed from %s at step %d (%.2f s)", info.uri, state.step, time.monotonic() - t0)
        return True

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> str:
        """Write a complete checkpoint of the current step. Collective."""
        t0 = time.monotonic()
        step = self.state.step
        self.reporter.set_state("checkpointing")
        target = self.ckpt.begin(step)
        self.engine.save_state(target / "state")
        if self.export_model is not None:
            self.export_model(target / "model")
        info = self.ckpt.commit(step, self.state, self.cfg.checkpoint_keep)
        seconds = time.monotonic() - t0
        if self.engine.is_main:
            kept = [{"step": c.step, "uri": c.uri, "time": c.time} for c in self.ckpt.complete()]
            self.reporter.log_checkpoint(step, info.uri, info.time, seconds, kept)
        self.reporter.set_state("running")
        log.info("checkpoint %s (%.2f s)", info.uri, seconds)
        return info.uri

    # ------------------------------------------------------------------ training

    def run(self) -> LoopResult:
        """Train to ``total_steps``. Raises :class:`Preempted` after a requested stop."""
        cfg, engine, st = self.cfg, self.engine, self.state
        gas = cfg.gradient_accumulation_steps
        self.reporter.start(st.step, st.trained_tokens)
        engine.train_mode(True)
        result = LoopResult(st)
        last_ckpt_step = st.step if st.step > 0 else -1
        log_loss, log_units = 0.0, 0.0
        orders: dict[int, list[int]] = {}
        t_start = time.monotonic() - st.elapsed_seconds

        def take() -> list[Any]:
            """This rank's rows of the next micro-batch; the data position advances."""
            if st.micro_index >= self.order.micro_per_epoch:
                st.epoch += 1
                st.micro_index = 0
            if st.epoch not in orders:
                orders.clear()
                orders[st.epoch] = self.order.epoch_order(st.epoch)
            idx = self.order.micro_batch(orders[st.epoch], st.micro_index, engine.rank)
            st.micro_index += 1
            return [self.train_rows[i] for i in idx]

        extra_tokens = [0]

        def more() -> dict[str, torch.Tensor]:
            """The next micro-batch, collated (for an RL objective's extra rounds)."""
            rows = take()
            extra_tokens[0] += sum(self.objective.row_tokens(r) for r in rows)
            return self.objective.collate(rows)

        eval_loss: float | None = None
        while st.step < self.total_steps:
            # a stop requested before this step (e.g. while loading or checkpointing)
            if engine.any_rank(self.stop.requested):
                self._preempt(last_ckpt_step)
            t0 = time.monotonic()
            batches = []
            tokens = 0
            for _j in range(gas):
                rows = take()
                tokens += sum(self.objective.row_tokens(r) for r in rows)
                batches.append(self.objective.collate(rows))
            rollout = getattr(self.objective, "rollout", None)
            if rollout is not None:  # RL: sample and score with the current policy first
                extra_tokens[0] = 0
                batches = rollout(engine, batches, st.step, more=more)
                tokens += extra_tokens[0] + int(getattr(self.objective, "rollout_tokens", 0))
            local_units = sum(self.objective.units(b) for b in batches)
            (units,) = engine.all_reduce_sum([local_units])
            if units <= 0:
                units = 1.0  # nothing to learn in this step; gradients stay zero
            lr_used = engine.learning_rate
            loss_total = 0.0
            extras: dict[str, float] = {}
            updates = int(getattr(self.objective, "updates_per_step", 1))
            for _update in range(updates):  # > 1: PPO epochs on one rollout
                for j, batch in enumerate(batches):
                    batch = {k: v.to(engine.device) for k, v in batch.items()}
                    with engine.forward_context():
                        s, ex = self.objective.loss_sum(engine, batch)
                    engine.backward(s * (engine.world_size / units), last_micro_step=j == gas - 1)
                    loss_total += float(s.detach()) / updates
                    for k, v in ex.items():
                        extras[k] = extras.get(k, 0.0) + v / updates
                grad_norm = engine.step()
            stat_fn = getattr(self.objective, "step_stats", None)
            stats: dict[str, tuple[float, float]] = stat_fn() if stat_fn is not None else {}
            if self.step_delay:
                time.sleep(self.step_delay)  # test facility (see the module doc)
            st.step += 1
            stop_here = self.stop_at_step is not None and st.step == self.stop_at_step
            keys = sorted(extras)
            skeys = sorted(stats)
            sums = engine.all_reduce_sum(
                [loss_total, float(tokens), 1.0 if (self.stop.requested or stop_here) else 0.0]
                + [extras[k] for k in keys]
                + [x for k in skeys for x in stats[k]]
            )
            step_loss = sums[0] / units
            st.trained_tokens += int(sums[1])
            stop_now = sums[2] > 0
            extra_means = {k: sums[3 + i] / units for i, k in enumerate(keys)}
            base = 3 + len(keys)
            stat_means = {
                k: sums[base + 2 * i] / sums[base + 2 * i + 1]
                for i, k in enumerate(skeys)
                if sums[base + 2 * i + 1] > 0
            }
            if stat_means:
                extra_means.update(rl_metrics(stat_means, time.monotonic() - t0))
            st.elapsed_seconds = time.monotonic() - t_start
            result.losses.append(step_loss)
            log_loss += sums[0]
            log_units += units
            evaluated = False
            if self.validation_rows and (
                st.step % cfg.eval_every == 0 or st.step == self.total_steps
            ):
                eval_loss = evaluate(engine, self.objective, self.validation_rows, cfg.batch_size)
                st.last_eval_loss = eval_loss
                result.eval_loss = eval_loss
                evaluated = True
            if st.step % cfg.log_every_steps == 0 or st.step == self.total_steps or stop_now:
                self.reporter.log_step(
                    st.step,
                    loss=log_loss / log_units if log_units else float("nan"),
                    learning_rate=float(lr_used),
                    grad_norm=grad_norm,
                    trained_tokens=st.trained_tokens,
                    step_seconds=time.monotonic() - t0,
                    eval_loss=eval_loss if evaluated else None,
                    extra={
                        **{k: round(v, 6) for k, v in extra_means.items()},
                        "elapsed": round(st.elapsed_seconds, 4),
                    },
                )
                log_loss, log_units = 0.0, 0.0
            elif evaluated and eval_loss is not None:
                self.reporter.log_eval(st.step, eval_loss)
            if st.step % cfg.checkpoint_every_steps == 0 and st.step < self.total_steps:
                self.checkpoint()
                last_ckpt_step = st.step
            if stop_now:
                self._preempt(last_ckpt_step)
        return result

    def _preempt(self, last_ckpt_step: int) -> None:
        uri = None
        if self.state.step > 0 and self.state.step != last_ckpt_step:
            uri = self.checkpoint()
        elif self.state.step > 0:
            uri = self.ckpt.uri(self.state.step)
        self.reporter.log_preempted()
        self.reporter.set_state("preempted", f"stopped at step {self.state.step}")
        raise Preempted(self.state.step, uri)
