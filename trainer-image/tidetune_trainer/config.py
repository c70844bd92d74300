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
    gradient_checkpointing: bool = False
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
    #: what the run trains on: ``spec.baseModel.uri`` and the data's identity (URIs,
    #: format, columns, maxSamples, split, mix-in), as ``(spec field, value)`` pairs
    inputs: tuple[tuple[str, str], ...] = ()
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
            gradient_checkpointing=hp.gradient_checkpointing,
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
            inputs=spec_inputs(spec),
        )

    def inputs_dict(self) -> dict[str, str]:
        """:attr:`inputs` as a dict (spec field → value)."""
        return dict(self.inputs)

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (tests, benchmarks)."""
        return replace(self, **changes)

    @property
    def eval_every(self) -> int:
        """Evaluate every this many steps (defaults to the checkpoint interval)."""
        return self.eval_every_steps or self.checkpoint_every_steps

    def fingerprint(self) -> str:
        """A hash of what determines the training trajectory (hyperparameters, method,
        tuning, and the base model and data in :attr:`inputs`); a checkpoint written under
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
            "gradient_checkpointing",
        ):
            d.pop(k, None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def spec_inputs(spec: FineTuneJobSpec) -> tuple[tuple[str, str], ...]:
    """The base model and data a spec trains on, as ``(spec field, value)`` pairs: what a
    resumed run must share with the checkpoint it continues (same URIs, format, columns,
    maxSamples, validation split and mix-in)."""
    data = spec.data
    train = data.train
    out: list[tuple[str, Any]] = [
        ("spec.baseModel.uri", spec.base_model.uri),
        ("spec.data.train.uri", train.uri),
        ("spec.data.train.format", getattr(train.format, "value", train.format)),
        ("spec.data.train.promptColumn", getattr(train, "prompt_column", None)),
        ("spec.data.train.responseColumn", getattr(train, "response_column", None)),
        ("spec.data.maxSamples", data.max_samples),
    ]
    val = getattr(data, "validation", None)
    if val is not None:
        out.append(("spec.data.validation.uri", getattr(val, "uri", None)))
        out.append(("spec.data.validation.splitRatio", getattr(val, "split_ratio", None)))
    mix = getattr(data, "mix_in", None)
    if mix is not None:
        out.append(("spec.data.mixIn.uri", mix.uri))
        out.append(("spec.data.mixIn.ratio", mix.ratio))
        out.append(("spec.data.mixIn.format", getattr(mix.format, "value", mix.format)))
    return tuple((k, "" if v is None else str(v)) for k, v in out)
