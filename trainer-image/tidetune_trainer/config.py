"""The trainer's view of a FineTuneJob spec: one flat, typed, immutable configuration.

``TrainConfig.from_spec(spec)`` is the only place that reads the API model, so the
engine, the loop and the recipes stay independent of the API's nesting (and tests can
build a ``TrainConfig`` directly).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tidetune.api import FineTuneJobSpec

Method = Literal["sft", "cpt", "dpo", "grpo", "ppo"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training side needs, with the API's defaults."""

    method: Method = "sft"
    # tuning
    tuning: Literal["lora", "full"] = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    load_in_4bit: bool = False
    # optimisation
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.03
    max_seq_length: int = 2048
    max_grad_norm: float = 1.0
    seed: int = 42
    packing: bool = True
    log_every_steps: int = 1
    eval_every_steps: int | None = None
    # methods
    dpo_beta: float = 0.1
    # distribution
    zero_stage: int = 2
    offload: Literal["none", "cpu"] = "none"
    gpus_per_node: int = 1
    nodes: int = 1
    # checkpoints and output
    checkpoint_every_steps: int = 100
    checkpoint_keep: int = 3
    export_checkpoints: int = 1
    merge_lora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: FineTuneJobSpec) -> TrainConfig:
        """Flatten a validated ``FineTuneJobSpec``."""
        hp = spec.hyperparameters
        lora = spec.tuning.lora_config
        return cls(
            method=spec.method.value,
            tuning=spec.tuning.type.value,
            lora_rank=lora.rank,
            lora_alpha=float(lora.alpha),
            lora_dropout=float(lora.dropout),
            lora_target_modules=tuple(lora.target_modules),
            load_in_4bit=spec.tuning.load_in_4bit,
            epochs=hp.epochs,
            max_steps=hp.max_steps,
            batch_size=hp.batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            learning_rate=hp.learning_rate,
            lr_scheduler=hp.lr_scheduler,
            weight_decay=hp.weight_decay,
            warmup_steps=hp.warmup_steps,
            warmup_ratio=hp.warmup_ratio,
            max_seq_length=hp.max_seq_length,
            max_grad_norm=hp.max_grad_norm,
            seed=hp.seed,
            packing=hp.packing,
            log_every_steps=hp.log_every_steps,
            eval_every_steps=hp.eval_every_steps,
            dpo_beta=spec.dpo.beta if spec.dpo is not None else 0.1,
            zero_stage=spec.deepspeed.zero_stage,
            offload=spec.deepspeed.offload.value,
            gpus_per_node=spec.resources.gpus_per_node,
            nodes=spec.resources.nodes,
            checkpoint_every_steps=spec.checkpointing.every_steps,
            checkpoint_keep=spec.checkpointing.keep,
            export_checkpoints=spec.output.export_checkpoints,
            merge_lora=spec.output.merge_lora,
        )

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (tests, benchmarks)."""
        return replace(self, **changes)

    @property
    def eval_every(self) -> int:
        """Evaluate every this many steps (defaults to the checkpoint interval)."""
        return self.eval_every_steps or self.checkpoint_every_steps

    def fingerprint(self) -> str:
        """A hash of what determines the training trajectory; a checkpoint written under
        another fingerprint cannot be resumed exactly. Checkpoint/export settings and
        the node layout are excluded (the world size is checked separately)."""
        d = asdict(self)
        for k in (
            "checkpoint_every_steps",
            "checkpoint_keep",
            "export_checkpoints",
            "merge_lora",
            "log_every_steps",
            "eval_every_steps",
            "extra",
            "gpus_per_node",
            "nodes",
            "offload",
        ):
            d.pop(k, None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
