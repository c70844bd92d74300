"""The FineTuneJob resource: spec (what users write) and status (what the operator tells).

This module implements ``shared/API.md``. The CRD in ``crds/`` is generated from it
(:mod:`tidetune.crdgen`); do not edit the YAML by hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tidetune.api.cel import fail, rule, validations
from tidetune.api.constants import (
    BUILTIN_MODELS,
    FINETUNEJOB_KIND,
    AnswerExtraction,
    DataFormat,
    Method,
    Offload,
    Phase,
    RewardPreset,
    RlLossType,
    TuningType,
)
from tidetune.api.types import (
    DNS1123_SUBDOMAIN_PATTERN,
    REASON_PATTERN,
    ApiModel,
    DisplayName,
    DnsLabel,
    DnsSubdomain,
    Identifier,
    PositiveDuration,
    Quantity,
)

MODEL_URI_PATTERN = (
    r"^((s3|pvc|file)://.+|hf://[^/\s]+/[^/\s]+|builtin://(" + "|".join(BUILTIN_MODELS) + r"))$"
)
DATA_URI_PATTERN = r"^(s3|pvc|file)://.+$"
KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
GPU_TYPE_PATTERN = r"^[a-z0-9][-a-z0-9]*$"
#: a pip requirement specifier: a name, optional extras, optional version constraints
REQUIREMENT_PATTERN = (
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"(\s*(==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?$"
)

#: The data formats each method can train on.
FORMATS_FOR_METHOD: dict[Method, tuple[DataFormat, ...]] = {
    Method.SFT: (DataFormat.MESSAGES, DataFormat.PROMPT_COMPLETION),
    Method.CPT: (DataFormat.TEXT,),
    Method.DPO: (DataFormat.PREFERENCE,),
    Method.GRPO: (DataFormat.MESSAGES, DataFormat.PROMPT_COMPLETION),
    Method.PPO: (DataFormat.MESSAGES, DataFormat.PROMPT_COMPLETION),
}


def _one_of(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(str(v) for v in values)


# --------------------------------------------------------------------------- model


class BaseModelRef(ApiModel):
    """Where the base model's weights and tokenizer come from."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description=(
            "Base model location: s3://bucket/prefix/, pvc://claim/path, file:///path, "
            "hf://org/name (only where the cluster can reach a hub) or builtin://tiny-llama "
            "(a tiny random model built from config, for smoke tests of the platform)."
        ),
    )


# --------------------------------------------------------------------------- tuning


class LoraConfig(ApiModel):
    """LoRA adapter settings."""

    rank: int = Field(8, ge=1, le=256, description="LoRA rank r, 1–256.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / rank), > 0.")
    dropout: float = Field(0.05, ge=0, le=0.5, description="Dropout on the LoRA path, 0–0.5.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["all-linear"],
        json_schema_extra={"default": ["all-linear"]},
        min_length=1,
        max_length=64,
        description=(
            "Module names to adapt (e.g. q_proj, v_proj); `all-linear` adapts every linear "
            "layer except the output head."
        ),
    )


class Tuning(ApiModel):
    """LoRA (an adapter on a frozen base) or full tuning (every weight)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.lora) || !has(self.type) || self.type == 'lora'",
                "lora settings apply only with type: lora",
                ".lora",
            ),
            rule(
                "!has(self.loadIn4bit) || !self.loadIn4bit || !has(self.type) "
                "|| self.type == 'lora'",
                "loadIn4bit (QLoRA) applies only with type: lora",
                ".loadIn4bit",
            ),
        )
    )

    type: TuningType = Field(TuningType.LORA, description="lora or full. Default lora.")
    lora: LoraConfig | None = Field(
        None, description="LoRA settings; only with type lora. Defaults apply when omitted."
    )
    load_in_4bit: bool = Field(
        False,
        alias="loadIn4bit",
        description="QLoRA: load the frozen base in 4-bit (needs a CUDA GPU); only with lora.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type is not TuningType.LORA:
            if self.lora is not None:
                fail(
                    "lora",
                    "lora settings apply only with type: lora; remove them or set type: lora",
                )
            if self.load_in_4bit:
                fail("loadIn4bit", "loadIn4bit (QLoRA) applies only with type: lora")
        return self

    @property
    def lora_config(self) -> LoraConfig:
        """The LoRA settings in force (defaults when the spec leaves them out)."""
        return self.lora or LoraConfig()


# --------------------------------------------------------------------------- data


class DatasetRef(ApiModel):
    """A dataset: a JSONL file (or a prefix of JSONL files) and how its lines are laid out."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "(has(self.format) && self.format == 'prompt-completion') || "
                "(!has(self.promptColumn) && !has(self.responseColumn))",
                "promptColumn and responseColumn apply only with format: prompt-completion",
            ),
        )
    )

    uri: str = Field(
        pattern=DATA_URI_PATTERN,
        max_length=2048,
        description="s3://bucket/key.jsonl, pvc://claim/path.jsonl or file:///path.jsonl.",
    )
    format: DataFormat = Field(
        DataFormat.MESSAGES,
        description=(
            "messages (chat turns, optional per-message loss_weight), preference (an assistant "
            "turn with scored candidates), text (continued pre-training) or prompt-completion."
        ),
    )
    prompt_column: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="prompt-completion only: the prompt's key in each line. Default `prompt`.",
    )
    response_column: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description=(
            "prompt-completion only: the completion's key in each line. Default `completion`."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.format is not DataFormat.PROMPT_COMPLETION:
            for name, value in (
                ("promptColumn", self.prompt_column),
                ("responseColumn", self.response_column),
            ):
                if value is not None:
                    fail(name, f"{name} applies only with format: prompt-completion")
        return self

    @property
    def columns(self) -> tuple[str, str]:
        """(prompt, response) column names in force for prompt-completion."""
        return (self.prompt_column or "prompt", self.response_column or "completion")


class ValidationData(ApiModel):
    """Held-out data for evaluation: a separate file or a split of the training set."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "has(self.uri) != has(self.splitRatio)",
                "set exactly one of uri or splitRatio",
            ),
        )
    )

    uri: str | None = Field(
        None,
        pattern=DATA_URI_PATTERN,
        max_length=2048,
        description="A separate validation file (same format as the training set).",
    )
    split_ratio: float | None = Field(
        None,
        gt=0,
        le=0.5,
        description=(
            "Hold out this share of the training set (deterministic for the seed); 0 < r ≤ 0.5."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.uri is None) == (self.split_ratio is None):
            fail(
                "uri" if self.uri is not None else "splitRatio",
                "set exactly one of uri or splitRatio"
                + (", not both" if self.uri is not None else ""),
            )
        return self


class MixIn(ApiModel):
    """A second dataset blended into the training set (e.g. general data against forgetting)."""

    uri: str = Field(
        pattern=DATA_URI_PATTERN, max_length=2048, description="The dataset to mix in."
    )
    ratio: float = Field(ge=0.01, le=0.99, description="Its share of the blended whole, 0.01–0.99.")
    format: DataFormat | None = Field(
        None, description="Its format; defaults to the training set's format."
    )


class DataSpec(ApiModel):
    """Training data, validation data, an optional mix-in and a sample cap."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.maxSamples) || self.maxSamples != 0",
                "maxSamples is 0; use -1 for all samples or a count ≥ 1",
                ".maxSamples",
            ),
        )
    )

    train: DatasetRef = Field(description="The training set.")
    validation: ValidationData | None = Field(
        None, description="Evaluation data: exactly one of uri or splitRatio. None: no evaluation."
    )
    mix_in: MixIn | None = Field(None, description="Blend a second dataset at a ratio.")
    max_samples: int = Field(
        -1,
        ge=-1,
        le=1_000_000_000,
        description="Use at most this many training samples; -1 uses all.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_samples == 0:
            fail("maxSamples", "maxSamples is 0; use -1 for all samples or a count ≥ 1")
        return self


# --------------------------------------------------------------------------- hyperparameters


class Hyperparameters(ApiModel):
    """Optimisation settings. Every field has a documented default."""

    epochs: int = Field(
        3, ge=1, le=50, description="Passes over the data, 1–50; ignored when maxSteps is set."
    )
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop after this many optimizer steps, 1–1000000."
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Rows per device per micro-step, 1–1024.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-steps per optimizer step, 1–1024."
    )
    learning_rate: float = Field(1.0e-4, gt=0, le=1, description="Peak learning rate, 0 < lr ≤ 1.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warm-up: cosine (default), linear or constant."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay, 0–1.")
    warmup_steps: int | None = Field(
        None, ge=0, le=1_000_000, description="Warm-up steps; wins over warmupRatio when set."
    )
    warmup_ratio: float = Field(
        0.03, ge=0, le=0.5, description="Warm-up as a share of all steps, 0–0.5."
    )
    max_seq_length: int = Field(
        2048,
        ge=16,
        le=1_048_576,
        description="Tokens per row, 16–1048576; longer samples are truncated (CPT text is split).",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm, > 0.")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for data order, splits and initialisation."
    )
    packing: bool = Field(
        True,
        description=(
            "Pack samples into full rows of maxSeqLength, with no attention across samples."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute activations in the backward pass instead of keeping them: less memory, "
            "about a third more compute; works with LoRA and full tuning."
        ),
    )
    log_every_steps: int = Field(
        1, ge=1, le=100_000, description="Write a metrics line every this many steps."
    )
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Evaluate every this many steps; defaults to checkpointing.everySteps.",
    )


# --------------------------------------------------------------------------- methods


class DpoConfig(ApiModel):
    """Direct Preference Optimisation settings."""

    beta: float = Field(0.1, gt=0, le=10, description="Strength of the KL penalty, 0 < beta ≤ 10.")


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the job's own namespace."""

    name: DnsSubdomain = Field(description="ConfigMap name (in the job's namespace).")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=KEY_PATTERN,
        description="Key holding the Python source.",
    )


Requirement = Annotated[str, Field(min_length=1, max_length=200, pattern=REQUIREMENT_PATTERN)]


class RewardFunction(ApiModel):
    """A user reward function: Python source from a ConfigMap."""

    config_map_ref: ConfigMapKeyRef = Field(description="Where the source lives.")
    entrypoint: Identifier = Field(
        "reward",
        description=(
            "Function to call: f(prompts, completions, **columns) -> list[float]. Default `reward`."
        ),
    )
    requirements: list[Requirement] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Python packages the function imports, as requirement specifiers "
            "(`sympy>=1.12`). They are never installed at run time: the reward runtime "
            "(rl.rewardRuntime.image on a cluster, the trainer's environment locally) must "
            "provide them, and the job fails before training when one is missing."
        ),
    )


class RewardParams(ApiModel):
    """Parameters of a reward preset; each preset reads the ones it documents."""

    column: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description=(
            "The dataset column holding the reference answer (exact-match, numeric-match, "
            "contains-answer). Default: the completion column (responseColumn), or the "
            "last assistant message for the messages format."
        ),
    )
    extract: AnswerExtraction = Field(
        AnswerExtraction.AUTO,
        description=(
            "Where the answer is in the completion (and the reference): auto (\\boxed{…}, "
            "else after '####', else the last number for numeric-match or the whole text), "
            "last-number, boxed, after-hashes, last-line, none (the whole text)."
        ),
    )
    pattern: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="regex-match: a Python regular expression the completion must match (search).",
    )
    full_match: bool = Field(
        False, description="regex-match: the whole completion must match, not a part of it."
    )
    values: list[Annotated[str, Field(min_length=1, max_length=1000)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="contains-all / contains-any: the strings to look for.",
    )
    case_sensitive: bool = Field(
        False, description="Compare case-sensitively (exact-match, contains-*, regex-match)."
    )
    tolerance: float = Field(
        1e-6, ge=0, le=1e6, description="numeric-match: the largest absolute difference accepted."
    )
    json_schema: str | None = Field(
        None,
        min_length=2,
        max_length=65536,
        alias="schema",
        description="json-valid: a JSON Schema (as JSON text) the parsed completion must match.",
    )
    target: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description=(
            "length-target: the wanted length (1 at the target, falling linearly to 0 at 0 "
            "and at twice the target); length-penalty: the free length before the penalty "
            "starts (default 200)."
        ),
    )
    unit: Literal["chars", "words"] = Field(
        "chars", description="length-target / length-penalty: count characters or words."
    )


class RewardRule(ApiModel):
    """One weighted reward rule: exactly one of a preset or a function."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("has(self.preset) != has(self.function)", "set exactly one of preset or function"),
            rule(
                "!has(self.preset) || self.preset != 'regex-match' || "
                "(has(self.params) && has(self.params.pattern))",
                "preset regex-match needs params.pattern",
                ".params",
            ),
            rule(
                "!has(self.preset) || !(self.preset in ['contains-all', 'contains-any']) || "
                "(has(self.params) && has(self.params.values))",
                "presets contains-all and contains-any need params.values",
                ".params",
            ),
            rule(
                "!has(self.preset) || self.preset != 'length-target' || "
                "(has(self.params) && has(self.params.target))",
                "preset length-target needs params.target",
                ".params",
            ),
            rule(
                "!has(self.function) || !has(self.params)",
                "params apply to presets only",
                ".params",
            ),
        )
    )

    preset: RewardPreset | None = Field(
        None,
        description=(
            "A built-in rule: exact-match, numeric-match, contains-answer (against a "
            "reference column), regex-match, contains-all, contains-any, json-valid, "
            "think-format, length-target, length-penalty. A preset may appear more than once."
        ),
    )
    params: RewardParams | None = Field(None, description="The preset's parameters.")
    function: RewardFunction | None = Field(None, description="A user function from a ConfigMap.")
    weight: float = Field(
        1.0, ge=-100, le=100, description="reward = Σ weight × rule; -100–100 (negative penalises)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.preset is None) == (self.function is None):
            fail(
                "preset",
                "set exactly one of preset or function"
                + (", not both" if self.preset is not None else ""),
            )
        p = self.params
        if self.preset == RewardPreset.REGEX_MATCH and (p is None or p.pattern is None):
            fail("params", "preset regex-match needs params.pattern")
        if self.preset in (RewardPreset.CONTAINS_ALL, RewardPreset.CONTAINS_ANY) and (
            p is None or p.values is None
        ):
            fail("params", "presets contains-all and contains-any need params.values")
        if self.preset == RewardPreset.LENGTH_TARGET and (p is None or p.target is None):
            fail("params", "preset length-target needs params.target")
        if self.function is not None and p is not None:
            fail("params", "params apply to presets only")
        if p is not None and p.pattern is not None:
            import re

            try:
                re.compile(p.pattern)
            except re.error as e:
                fail("params.pattern", f"not a valid Python regular expression: {e}")
        if p is not None and p.json_schema is not None:
            import json

            try:
                schema = json.loads(p.json_schema)
            except json.JSONDecodeError as e:
                fail("params.schema", f"not JSON: {e.msg} (column {e.colno})")
            if not isinstance(schema, (dict, bool)):
                fail("params.schema", "a JSON Schema is an object (or true/false)")
        return self


class RewardRuntime(ApiModel):
    """Where and how custom reward functions run (the sandbox)."""

    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description=(
            "Container image of the reward runtime on a cluster (a sidecar next to the "
            "trainer). Build it FROM the trainer image with the functions' requirements "
            "installed; default: the trainer image."
        ),
    )
    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Wall-clock limit of one call of a function (s)."
    )
    memory_mi_b: int = Field(
        1024,
        ge=64,
        le=1_048_576,
        alias="memoryMiB",
        description="Address-space limit of one call of a function, in MiB.",
    )
    cpu: Quantity | None = Field(
        None,
        description=(
            "CPU of the reward runtime container on a cluster (request and limit, e.g. "
            '"2"); default one core per trainer process of the node (gpusPerNode, or 1).'
        ),
    )
    memory: Quantity | None = Field(
        None,
        description=(
            "Memory of the reward runtime container on a cluster (request and limit, e.g. "
            "4Gi); default memoryMiB per trainer process of the node plus 256Mi."
        ),
    )


class RlConfig(ApiModel):
    """GRPO / PPO settings."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.epsilonHigh) || self.epsilonHigh >= self.epsilon",
                "epsilonHigh must be at least epsilon",
                ".epsilonHigh",
            ),
            rule(
                "!has(self.maxResampleRounds) || (has(self.lossType) && self.lossType == 'dapo')",
                "maxResampleRounds applies to lossType dapo only",
                ".maxResampleRounds",
            ),
        )
    )

    num_generations: int = Field(
        4, ge=2, le=64, description="Completions sampled per prompt, 2–64."
    )
    max_completion_length: int = Field(
        256, ge=1, le=131_072, description="Tokens per sampled completion, 1–131072."
    )
    rewards: list[RewardRule] = Field(
        min_length=1, max_length=5, description="1–5 weighted reward rules."
    )
    loss_type: RlLossType = Field(
        RlLossType.GRPO,
        description=(
            "GRPO loss: grpo (mean per completion, then over completions; advantages "
            "scaled by the group's std), dapo (token-level mean, asymmetric clip "
            "epsilon/epsilonHigh, groups whose rewards all agree are left out, soft "
            "overlong penalty), dr_grpo (sum over tokens / (completions × "
            "maxCompletionLength), no std scaling). PPO always uses a token-level loss."
        ),
    )
    beta: float = Field(
        0.04,
        ge=0,
        le=10,
        description="KL coefficient to the reference model (0 turns the reference off).",
    )
    epsilon: float = Field(0.2, gt=0, le=1, description="Lower clip range of the policy ratio.")
    epsilon_high: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Upper clip range; default epsilon, or 0.28 with lossType dapo.",
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    epochs_per_rollout: int | None = Field(
        None,
        ge=1,
        le=16,
        description=(
            "Optimizer updates on each rollout (PPO epochs; GRPO's μ); default 1 for grpo, "
            "4 for ppo."
        ),
    )
    overlong_buffer: int | None = Field(
        None,
        ge=1,
        le=131_072,
        description=(
            "dapo: the last this many tokens before maxCompletionLength are penalised "
            "linearly (0 → -1); default a quarter of maxCompletionLength."
        ),
    )
    max_resample_rounds: int | None = Field(
        None,
        ge=0,
        le=64,
        description=(
            "dapo: dynamic sampling. Groups whose rewards all agree carry no signal and are "
            "left out; to replace them the step samples batchSize more prompts per process "
            "(the next ones in the data order), up to this many extra rounds, until it has "
            "as many groups with a signal as it has prompts. At the cap it trains on the "
            "groups it has (metric unfilledGroups). 0 only leaves them out. Default 4."
        ),
    )
    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount factor.")
    gae_lambda: float = Field(0.95, ge=0, le=1, alias="lambda", description="ppo: GAE lambda.")
    value_coef: float = Field(0.1, gt=0, le=10, description="ppo: weight of the value loss.")
    sample_every_steps: int = Field(
        10,
        ge=1,
        le=1_000_000,
        description=(
            "Write sample completions with their scores to samples.jsonl in the run "
            "location every this many steps."
        ),
    )
    reward_runtime: RewardRuntime = Field(
        default_factory=RewardRuntime,
        description="Limits and image of the custom reward functions' sandbox.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            fail("epsilonHigh", "epsilonHigh must be at least epsilon")
        if self.max_resample_rounds is not None and self.loss_type is not RlLossType.DAPO:
            fail("maxResampleRounds", "maxResampleRounds applies to lossType dapo only")
        return self


# --------------------------------------------------------------------------- resources


class Resources(ApiModel):
    """What each node of the job gets."""

    nodes: int = Field(
        1, ge=1, le=512, description="Nodes: a PyTorchJob Master plus nodes-1 Workers, 1–512."
    )
    gpus_per_node: int = Field(
        1, ge=0, le=16, description="GPUs per node, 0–16 (0 = CPU only, for smoke tests)."
    )
    gpu_type: str | None = Field(
        None,
        max_length=64,
        pattern=GPU_TYPE_PATTERN,
        description=(
            "GPU model for the estimate (e.g. a100, h100); defaults to the pool's or the "
            "operator's."
        ),
    )
    cpu: Quantity | None = Field(
        None, description='CPU per node (a Kubernetes quantity, e.g. "8").'
    )
    memory: Quantity | None = Field(None, description="Memory per node (e.g. 64Gi).")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class DeepSpeedConfig(ApiModel):
    """DeepSpeed ZeRO settings."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.offload) || self.offload == 'none' || !has(self.zeroStage) "
                "|| self.zeroStage > 0",
                "offload: cpu needs zeroStage 1, 2 or 3",
                ".offload",
            ),
        )
    )

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0–3 (0 = plain data parallel).")
    offload: Offload = Field(
        Offload.NONE, description="none or cpu (optimizer state, and parameters at stage 3)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.offload is Offload.CPU and self.zero_stage == 0:
            fail("offload", "offload: cpu needs zeroStage 1, 2 or 3")
        return self


#: A Kueue WorkloadPriorityClass name: a DNS-1123 subdomain that is also a label value (the
#: kueue.x-k8s.io/priority-class label carries it), so at most 63 characters.
WorkloadPriorityClassName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=DNS1123_SUBDOMAIN_PATTERN)
]


class Scheduling(ApiModel):
    """Where and when the job runs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.maxRuntime) || !self.maxRuntime.matches('^(0+(\\\\.0+)?[dhms])+$')",
                "maxRuntime must be longer than 0s",
                ".maxRuntime",
            ),
            rule(
                "!has(self.workloadPriorityClass) || has(self.queueName)",
                "workloadPriorityClass is Kueue's: it applies only with queueName",
                ".workloadPriorityClass",
            ),
        )
    )

    pool: DnsLabel | None = Field(
        None, description="IdlePool to run in; omit to run on any capacity now."
    )
    queue_name: DnsLabel | None = Field(
        None, description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label."
    )
    workload_priority_class: WorkloadPriorityClassName | None = Field(
        None,
        description=(
            "Kueue WorkloadPriorityClass (cluster-scoped) of the job's Workloads; sets the "
            "kueue.x-k8s.io/priority-class label. Kueue orders its queues by it and, where a "
            "ClusterQueue allows preemption, evicts lower-priority Workloads for it. Only with "
            "queueName."
        ),
    )
    priority: int = Field(
        0, ge=-1000, le=1000, description="Higher runs first within a pool, -1000–1000."
    )
    max_runtime: PositiveDuration = Field(
        "24h", description="Wall-clock budget across all attempts, e.g. 90m, 24h."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.workload_priority_class is not None and self.queue_name is None:
            fail(
                "workloadPriorityClass",
                "workloadPriorityClass is Kueue's: it applies only with queueName (a Kueue "
                "LocalQueue); set scheduling.queueName or remove it (scheduling.priority orders "
                "jobs within an IdlePool)",
            )
        return self


class Checkpointing(ApiModel):
    """How often the trainer checkpoints and how many checkpoints it keeps."""

    every_steps: int = Field(
        100, ge=1, le=1_000_000, description="Checkpoint every this many steps."
    )
    keep: int = Field(
        3, ge=1, le=100, description="Complete checkpoints kept, 1–100 (older ones are deleted)."
    )


class SecretRef(ApiModel):
    """A Secret in the job's own namespace."""

    name: DnsSubdomain = Field(
        description="Secret name. Keys: accessKey, secretKey, endpoint (optional)."
    )


class Publish(ApiModel):
    """Register the exported model in a model registry when the job succeeds."""

    registry: str = Field(
        pattern=r"^https?://[^\s/]+(/.*)?$",
        max_length=2048,
        description="The MLflow tracking server (model registry) URL, http(s)://host[:port].",
    )
    model: DisplayName | None = Field(
        None,
        description=(
            "Registered model name: a new model, or a new version of an existing one. "
            "Defaults to the job's name."
        ),
    )
    artifact: str | None = Field(
        None,
        pattern=r"^(final|merged|checkpoint-[0-9]+)$",
        max_length=64,
        description="Which artifact: merged, final or checkpoint-N. Default merged when "
        "mergeLora is set, else final.",
    )
    copy_files: bool = Field(
        True,
        description=(
            "Copy the files into the registry's artifact store (true), or register the "
            "artifact where it is (false)."
        ),
    )
    credentials_secret_ref: SecretRef | None = Field(
        None,
        description="Secret with the registry's credentials: token, or username and password.",
    )


#: why ``spec.output.uri`` may not be a claim: the operator follows a job by reading
#: progress.json and verifies its artifacts in the output location, and it mounts no claim
OUTPUT_PVC_MESSAGE = (
    "output to pvc:// is not supported: the operator reads the job's progress and verifies "
    "its artifacts in the output location, and it cannot read a claim; use object storage "
    "(s3://bucket/prefix/)"
)


class Output(ApiModel):
    """Where artifacts go and what is exported."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.publish) || !has(self.publish.artifact) "
                "|| self.publish.artifact != 'merged' || (has(self.mergeLora) && self.mergeLora)",
                "publish.artifact merged needs mergeLora: true",
                ".publish.artifact",
            ),
            rule(
                "!has(self.uri) || !self.uri.startsWith('pvc://')",
                OUTPUT_PVC_MESSAGE,
                ".uri",
            ),
        )
    )

    uri: str | None = Field(
        None,
        pattern=DATA_URI_PATTERN,
        max_length=2048,
        description=(
            "Artifacts go under <uri>/<namespace>/<name>/<uid>/; defaults to the operator's "
            "configured output location."
        ),
    )
    export_checkpoints: int = Field(
        1,
        ge=0,
        le=100,
        description="How many of the latest checkpoints to export as loadable models.",
    )
    merge_lora: bool = Field(
        False, description="Also export the base with the LoRA adapter merged in."
    )
    publish: Publish | None = Field(
        None,
        description="Register the exported model in a model registry (MLflow) on success.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.publish is not None and self.publish.artifact == "merged" and not self.merge_lora:
            fail("publish.artifact", "publish.artifact merged needs mergeLora: true")
        if self.uri is not None and self.uri.startswith("pvc://"):
            fail("uri", OUTPUT_PVC_MESSAGE)
        return self


# --------------------------------------------------------------------------- spec


class FineTuneJobSpec(ApiModel):
    """What to train, on what, with what, where and when."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "self.method == 'dpo' || !has(self.dpo)",
                "dpo settings apply only with method: dpo",
                ".dpo",
            ),
            rule(
                "(self.method == 'grpo' || self.method == 'ppo') == has(self.rl)",
                "rl settings are required with methods grpo and ppo and apply only to them",
                ".rl",
            ),
            rule(
                "!has(self.data.train.format) ? self.method in ['sft', 'grpo', 'ppo'] : "
                + " || ".join(
                    f"(self.method == '{m}' && self.data.train.format in "
                    f"[{', '.join(repr(str(f)) for f in fs)}])"
                    for m, fs in FORMATS_FOR_METHOD.items()
                ),
                "the training data format does not suit the method: sft takes messages or "
                "prompt-completion, cpt text, dpo preference, grpo/ppo messages or "
                "prompt-completion",
                ".data.train.format",
            ),
            rule(
                "!has(self.data.mixIn) || !has(self.data.mixIn.format) || "
                + " || ".join(
                    f"(self.method == '{m}' && self.data.mixIn.format in "
                    f"[{', '.join(repr(str(f)) for f in fs)}])"
                    for m, fs in FORMATS_FOR_METHOD.items()
                ),
                "the mix-in data format does not suit the method",
                ".data.mixIn.format",
            ),
            rule(
                "!has(self.scheduling) || !has(self.scheduling.pool) || !has(self.resources) "
                "|| !has(self.resources.gpusPerNode) || self.resources.gpusPerNode > 0",
                "a job in an IdlePool needs gpusPerNode 1–16",
                ".resources.gpusPerNode",
            ),
            rule(
                "!has(self.output) || !has(self.output.mergeLora) || !self.output.mergeLora "
                "|| !has(self.tuning) || !has(self.tuning.type) || self.tuning.type == 'lora'",
                "mergeLora applies only with tuning type lora",
                ".output.mergeLora",
            ),
            rule(
                "!has(oldSelf.cancelled) || !oldSelf.cancelled "
                "|| (has(self.cancelled) && self.cancelled)",
                "a cancelled job stays cancelled; copy it (tidetune copy) to run it again",
                ".cancelled",
            ),
            rule(
                "!has(self.output) || !has(self.output.exportCheckpoints) "
                "|| self.output.exportCheckpoints <= "
                "(has(self.checkpointing) && has(self.checkpointing.keep) "
                "? self.checkpointing.keep : 3)",
                "exportCheckpoints cannot exceed checkpointing.keep",
                ".output.exportCheckpoints",
            ),
        )
    )

    display_name: DisplayName | None = Field(
        None, description="Human-friendly name: 1–200 letters (any script), digits, '-', '_'."
    )
    description: str = Field("", max_length=2000, description="Free text, up to 2000 characters.")
    method: Method = Field(description="Training method: sft, dpo, cpt, grpo or ppo.")
    base_model: BaseModelRef = Field(description="The model to start from.")
    tuning: Tuning = Field(
        default_factory=Tuning,
        json_schema_extra={"default": {}},
        description="LoRA (default) or full tuning.",
    )
    data: DataSpec = Field(description="Training and validation data.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        json_schema_extra={"default": {}},
        description="Optimisation settings.",
    )
    dpo: DpoConfig | None = Field(None, description="DPO settings; method dpo only.")
    rl: RlConfig | None = Field(None, description="GRPO/PPO settings; required for those methods.")
    resources: Resources = Field(
        default_factory=Resources,
        json_schema_extra={"default": {}},
        description="Nodes, GPUs, CPU, memory.",
    )
    deepspeed: DeepSpeedConfig = Field(
        default_factory=DeepSpeedConfig,
        json_schema_extra={"default": {}},
        description="DeepSpeed ZeRO stage and offload.",
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling,
        json_schema_extra={"default": {}},
        description="Pool, Kueue queue, priority, runtime budget.",
    )
    checkpointing: Checkpointing = Field(
        default_factory=Checkpointing,
        json_schema_extra={"default": {}},
        description="Checkpoint interval and retention.",
    )
    output: Output = Field(
        default_factory=Output,
        json_schema_extra={"default": {}},
        description="Artifacts location and export.",
    )
    storage_secret_ref: SecretRef | None = Field(
        None,
        description="Secret with object-storage credentials (accessKey, secretKey, endpoint).",
    )
    suspend: bool = Field(
        False, description="true pauses the job (checkpoint, then stop); false resumes it."
    )
    cancelled: bool = Field(
        False,
        description=(
            "true stops the job for good: phase Cancelled, the launched job is deleted (the "
            "trainer checkpoints on its way out), status, checkpoints and artifacts are kept. "
            "Cannot be set back to false: copy the job to run it again."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.dpo is not None and self.method is not Method.DPO:
            fail("dpo", f"dpo settings apply only with method: dpo, not {self.method}")
        if self.method.is_rl and self.rl is None:
            fail("rl", f"method {self.method} needs rl settings with 1–5 rewards")
        if self.rl is not None and not self.method.is_rl:
            fail("rl", f"rl settings apply only with methods grpo and ppo, not {self.method}")
        allowed = FORMATS_FOR_METHOD[self.method]
        if self.data.train.format not in allowed:
            fail(
                "data.train.format",
                f"method {self.method} cannot train on {self.data.train.format} data; "
                f"allowed: {_one_of(allowed)}",
            )
        mix_format = self.data.mix_in.format if self.data.mix_in is not None else None
        if mix_format is not None and mix_format not in allowed:
            fail(
                "data.mixIn.format",
                f"method {self.method} cannot train on {mix_format} data; "
                f"allowed: {_one_of(allowed)}",
            )
        if self.scheduling.pool and self.resources.gpus_per_node == 0:
            fail(
                "resources.gpusPerNode",
                "a job in an IdlePool runs on the pool's GPUs: set gpusPerNode to 1–16, "
                "or leave out scheduling.pool to run a CPU job anywhere",
            )
        if self.output.merge_lora and self.tuning.type is not TuningType.LORA:
            fail("output.mergeLora", "mergeLora applies only with tuning type lora")
        if self.output.export_checkpoints > self.checkpointing.keep:
            fail(
                "output.exportCheckpoints",
                f"exportCheckpoints {self.output.export_checkpoints} exceeds checkpointing.keep "
                f"{self.checkpointing.keep}; export at most as many checkpoints as are kept",
            )
        return self

    @property
    def model_scheme(self) -> str:
        return self.base_model.uri.split("://", 1)[0]


# --------------------------------------------------------------------------- status


class StatusModel(ApiModel):
    """Status parts: tolerant of fields a newer operator may add."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Succeeded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, pattern=REASON_PATTERN, description="CamelCase reason.")
    message: str = Field("", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, ge=0, description="Generation this reflects.")


class TimelineEntry(StatusModel):
    """One event in a job's life, newest last."""

    time: datetime = Field(description="When it happened.")
    type: str = Field(max_length=64, description="What happened, e.g. Queued, Started, Preempted.")
    reason: str = Field(max_length=128, description="Why, as a CamelCase reason.")
    message: str = Field("", max_length=1024, description="Detail for humans.")


class Progress(StatusModel):
    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps the run will take.")
    epoch: float = Field(0.0, ge=0, description="Fractional epoch.")
    percent: float = Field(0.0, ge=0, le=100, description="step / totalSteps in percent.")
    trained_tokens: float = Field(0.0, ge=0, description="Real (non-padding) tokens trained on.")
    eta: datetime | None = Field(None, description="Estimated completion time.")


class Metrics(StatusModel):
    train_loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(None, description="Current learning rate.")
    tokens_per_second: float | None = Field(None, description="Recent throughput.")
    grad_norm: float | None = Field(None, description="Latest gradient norm.")
    reward: float | None = Field(
        None,
        description="GRPO/PPO: latest mean reward (Σ weight × rule) of the sampled completions.",
    )
    reward_std: float | None = Field(None, description="GRPO/PPO: its standard deviation.")
    kl: float | None = Field(None, description="GRPO/PPO: latest mean KL to the reference.")
    entropy: float | None = Field(None, description="GRPO/PPO: latest mean token entropy.")
    completion_length: float | None = Field(
        None, description="GRPO/PPO: latest mean completion length (tokens)."
    )
    clip_fraction: float | None = Field(
        None, description="GRPO/PPO: share of completion tokens whose ratio was clipped."
    )


class Estimate(StatusModel):
    train_tokens: float = Field(ge=0, description="Tokens the run will train on (all epochs).")
    gpu_hours: float = Field(ge=0, description="Estimated GPU-hours.")
    cost: float = Field(ge=0, description="Estimated cost from the price table.")
    currency: str = Field("USD", max_length=8, description="Currency of cost.")
    gpu_type: str | None = Field(None, description="GPU model the estimate assumed.")
    sampled: bool = Field(False, description="Tokens were counted on a sample of the data.")


class LauncherRef(StatusModel):
    kind: str = Field(description="PyTorchJob, TrainJob or LocalProcess.")
    name: str = Field(description="Name of the launched object.")
    api_version: str | None = Field(None, description="Its apiVersion.")


class CheckpointRef(StatusModel):
    step: int = Field(ge=0, description="Step the checkpoint was taken at.")
    uri: str = Field(description="Where it lives.")
    time: datetime | None = Field(None, description="When it completed.")


class Artifact(StatusModel):
    name: str = Field(description="final, merged, checkpoint-<step>, manifest, metrics.")
    uri: str = Field(description="Where it lives.")
    size_bytes: int = Field(ge=0, description="Total size.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the content (for a directory: of its manifest entry list).",
    )


class FineTuneJobStatus(StatusModel):
    """What the operator tells: the product's face."""

    phase: Phase = Field(
        Phase.PENDING,
        description=(
            "Pending, Queued, Running, Suspended, Exporting, Succeeded, Failed or Cancelled."
        ),
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation last acted on."
    )
    message: str | None = Field(None, max_length=1024, description="One line on the current state.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes conditions.")
    timeline: list[TimelineEntry] = Field(
        default_factory=list, description="Events, newest last; the first 10 and last 90 are kept."
    )
    progress: Progress | None = Field(None, description="Steps, epoch, tokens and ETA.")
    metrics: Metrics | None = Field(None, description="Latest training metrics.")
    estimate: Estimate | None = Field(None, description="Estimated tokens, GPU-hours and cost.")
    pool: str | None = Field(None, description="The IdlePool the job runs in.")
    preemptions: int = Field(0, ge=0, description="Times the job was preempted and resumed.")
    failures: int = Field(0, ge=0, description="Genuine trainer failures retried so far.")
    run_seconds: float = Field(
        0.0, ge=0, description="Wall-clock seconds spent running in finished stints."
    )
    running_since: datetime | None = Field(
        None, description="Start of the current running stint (maxRuntime counts it too)."
    )
    last_progress_time: datetime | None = Field(
        None,
        description=(
            "When the operator last saw the trainer's step (or its session) change; with the "
            "current running stint's start, what a stall (stallTimeoutSeconds) is measured from."
        ),
    )
    attempt: int = Field(0, ge=0, description="Launch attempts so far (1 after the first launch).")
    pods_pending_since: datetime | None = Field(
        None,
        description=(
            "Since when the current attempt's pods have been asked to run and do not yet; the "
            "operator's start timeout counts from it (cleared once they run)."
        ),
    )
    start_timeouts: int = Field(
        0, ge=0, description="Attempts ended because their pods did not start in time."
    )
    start_retry_after: datetime | None = Field(
        None,
        description="After a start timeout: the next attempt is not started before this time.",
    )
    trainer_session: str | None = Field(
        None,
        max_length=256,
        description=(
            "<launched job>/<trainer run id> last seen: a new run of the same launched job's "
            "pod means the pod was replaced in place (its node lost), counted as a preemption."
        ),
    )
    launcher: LauncherRef | None = Field(None, description="The launched training job.")
    output_uri: str | None = Field(
        None,
        description=(
            "Where the job's files live: exported artifacts and manifest.json at the top, the "
            "run (checkpoints, metrics.jsonl, progress.json, each rank's log) under run/."
        ),
    )
    checkpoints: list[CheckpointRef] = Field(
        default_factory=list, description="Complete checkpoints kept."
    )
    artifacts: list[Artifact] = Field(
        default_factory=list, description="Exported models and files."
    )
    queued_time: datetime | None = Field(None, description="When the job was first queued.")
    start_time: datetime | None = Field(None, description="When training first started.")
    completion_time: datetime | None = Field(None, description="When the job ended.")


# --------------------------------------------------------------------------- object


class ObjectMeta(ApiModel):
    """The parts of metadata TideTune reads; everything else is passed through."""

    model_config = ConfigDict(extra="allow")

    name: DnsLabel = Field(description="DNS-1123 label, at most 63 characters.")
    namespace: DnsLabel | None = Field(None, description="Namespace (namespaced kinds).")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None


class FineTuneJob(ApiModel):
    """A fine-tuning job (namespaced; short name ftj)."""

    api_version: Literal["tidetune.io/v1alpha1"] = Field(
        "tidetune.io/v1alpha1", description="tidetune.io/v1alpha1"
    )
    kind: Literal["FineTuneJob"] = Field(FINETUNEJOB_KIND, description="FineTuneJob")
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @classmethod
    def from_manifest(cls, body: dict[str, Any]) -> FineTuneJob:
        """Validate a manifest (as read from YAML or the API server)."""
        return cls.model_validate(body)
