"""Estimate a fine-tuning job's GPU-hours and cost before it runs. Pure: no torch, no I/O
except :func:`load_tables` reading a table file.

The model is the usual transformer FLOPs rule of thumb:

- FLOPs per trained token: ``6·N`` for full tuning (forward 2N, backward 4N), ``4·N`` for
  LoRA (no weight gradients for the frozen base), ×1.25 for 4-bit (dequantisation);
  DPO adds a reference forward (``+2·N``) per token. ``N`` is the base model's parameter
  count; attention's sequence-length term is ignored (small below ~8k tokens).
- Throughput table: effective TFLOP/s one device sustains in training (peak × a realistic
  utilisation), per device type (``h100``, ``a100``, ``cpu``, …).
- Price table: price per device-hour in one currency, per device type.

``gpuHours = FLOPs / (TFLOP/s · 1e12) / 3600 / scaling`` where ``scaling`` is 1 on one
node and ``multi_node_efficiency`` (default 0.9) across nodes; ``cost = gpuHours · price``.
Both tables are configurable: pass :class:`EstimateTables` or load one from YAML/JSON
with :func:`load_tables` (``{"currency": "USD", "throughput": {...}, "prices": {...}}``;
entries given there override or extend the defaults).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_GPU_TYPE",
    "DEFAULT_TABLES",
    "Estimate",
    "EstimateError",
    "EstimateTables",
    "estimate",
    "estimate_for_spec",
    "flops_per_token",
    "gpu_type_for",
    "load_tables",
    "params_from_config",
]

#: The device type a GPU job is priced on when neither it nor its pool names one
#: (the operator's ``defaultGpuType`` overrides it).
DEFAULT_GPU_TYPE: Final = "a100"

#: Effective training TFLOP/s per device (bf16 dense peak × a typical utilisation).
DEFAULT_THROUGHPUT: Final[Mapping[str, float]] = {
    "h200": 989.0 * 0.45,
    "h100": 989.0 * 0.40,
    "a100": 312.0 * 0.45,
    "l40s": 362.0 * 0.35,
    "a10g": 125.0 * 0.35,
    "l4": 121.0 * 0.35,
    "v100": 125.0 * 0.30,
    "t4": 65.0 * 0.25,
    # one CPU training process (fp32): measured with the tiny smoke-test model, where
    # per-step overhead dominates (~1–2k tokens/s on 2 cores)
    "cpu": 0.001,
}

#: Price per device-hour (on-demand cloud ballpark; idle capacity may be priced lower).
DEFAULT_PRICES: Final[Mapping[str, float]] = {
    "h200": 5.00,
    "h100": 4.50,
    "a100": 3.00,
    "l40s": 1.80,
    "a10g": 1.00,
    "l4": 0.80,
    "v100": 2.50,
    "t4": 0.35,
    "cpu": 0.05,
}


class EstimateError(ValueError):
    """The estimate's inputs or tables are not usable; the message says what to change."""


@dataclass(frozen=True)
class EstimateTables:
    """Throughput (effective TFLOP/s per device) and price (per device-hour) tables."""

    throughput: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    prices: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    currency: str = "USD"
    multi_node_efficiency: float = 0.9

    def __post_init__(self) -> None:
        for name, table in (("throughput", self.throughput), ("prices", self.prices)):
            for key, value in table.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise EstimateError(f"{name}.{key}: must be a number, got {value!r}")
                if value < 0 or (name == "throughput" and value == 0) or math.isnan(value):
                    raise EstimateError(
                        f"{name}.{key}: must be {'> 0' if name == 'throughput' else '>= 0'}, "
                        f"got {value!r}"
                    )
        if not 0 < self.multi_node_efficiency <= 1:
            raise EstimateError(
                f"multiNodeEfficiency: must be in (0, 1], got {self.multi_node_efficiency!r}"
            )

    def device_types(self) -> list[str]:
        """Device types known to both tables."""
        return sorted(set(self.throughput) & set(self.prices))


DEFAULT_TABLES: Final = EstimateTables()


def load_tables(path: str | Path, base: EstimateTables = DEFAULT_TABLES) -> EstimateTables:
    """Read tables from a YAML or JSON file; its entries override or extend ``base``.

    Keys: ``currency`` (str), ``throughput`` and ``prices`` (device type → number),
    ``multiNodeEfficiency`` (0–1]. Raises :class:`EstimateError` naming the file and key
    for anything else or a file that cannot be read.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise EstimateError(f"{p}: cannot read the estimate tables: {e.strerror or e}") from None
    try:
        if p.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:
        raise EstimateError(f"{p}: not valid YAML/JSON: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EstimateError(f"{p}: expected a mapping with throughput/prices/currency")
    unknown = set(raw) - {"currency", "throughput", "prices", "multiNodeEfficiency"}
    if unknown:
        raise EstimateError(
            f"{p}: unknown key(s) {sorted(unknown)}; allowed: currency, throughput, prices, "
            "multiNodeEfficiency"
        )
    tables: dict[str, dict[str, float]] = {
        "throughput": dict(base.throughput),
        "prices": dict(base.prices),
    }
    for name in ("throughput", "prices"):
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise EstimateError(f"{p}: {name}: expected a mapping of device type to number")
        for key, value in section.items():
            tables[name][str(key).lower()] = value
    currency = raw.get("currency", base.currency)
    if not isinstance(currency, str) or not currency:
        raise EstimateError(f"{p}: currency: expected a currency code such as USD")
    try:
        return EstimateTables(
            throughput=tables["throughput"],
            prices=tables["prices"],
            currency=currency,
            multi_node_efficiency=float(raw.get("multiNodeEfficiency", base.multi_node_efficiency)),
        )
    except EstimateError as e:
        raise EstimateError(f"{p}: {e}") from None


def flops_per_token(
    model_params: int, *, method: str = "sft", tuning: str = "lora", load_in_4bit: bool = False
) -> float:
    """Training FLOPs per token for a model of ``model_params`` parameters.

    ``method``: sft | cpt | dpo (grpo/ppo are counted like dpo: a policy and a reference
    pass). ``tuning``: lora | full. Raises :class:`EstimateError` for other values.
    """
    if model_params <= 0:
        raise EstimateError(f"model parameters must be > 0, got {model_params}")
    if tuning not in ("lora", "full"):
        raise EstimateError(f"spec.tuning.type: {tuning!r} is not one of lora, full")
    if method not in ("sft", "cpt", "dpo", "grpo", "ppo"):
        raise EstimateError(f"spec.method: {method!r} is not one of sft, dpo, cpt, grpo, ppo")
    per_param = 6.0 if tuning == "full" else 4.0
    if method in ("dpo", "grpo", "ppo"):
        per_param += 2.0  # the frozen reference model's forward pass
    if load_in_4bit:
        per_param *= 1.25
    return per_param * model_params


@dataclass(frozen=True)
class Estimate:
    """The result of :func:`estimate`. ``to_status()`` gives the API's status.estimate."""

    train_tokens: int
    model_params: int
    device_type: str
    devices: int
    flops: float
    tokens_per_second: float
    gpu_hours: float
    wall_hours: float
    cost: float
    currency: str

    def to_status(self) -> dict[str, Any]:
        """``{trainTokens, gpuHours, cost, currency}`` as in ``status.estimate``."""
        return {
            "trainTokens": self.train_tokens,
            "gpuHours": round(self.gpu_hours, 6),
            "cost": round(self.cost, 4),
            "currency": self.currency,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, camelCase (what ``estimate.json`` holds)."""
        return {
            **self.to_status(),
            "modelParams": self.model_params,
            "deviceType": self.device_type,
            "devices": self.devices,
            "flops": self.flops,
            "tokensPerSecond": round(self.tokens_per_second, 3),
            "wallHours": round(self.wall_hours, 6),
        }


def estimate(
    train_tokens: int,
    model_params: int,
    device_type: str,
    *,
    devices: int = 1,
    nodes: int = 1,
    method: str = "sft",
    tuning: str = "lora",
    load_in_4bit: bool = False,
    tables: EstimateTables = DEFAULT_TABLES,
) -> Estimate:
    """GPU-hours and cost to train ``train_tokens`` tokens (all epochs) on ``devices``
    devices of ``device_type`` spread over ``nodes`` nodes.

    Raises :class:`EstimateError` for negative tokens, no devices, or a device type that
    is not in both tables (the message lists the known ones).
    """
    if train_tokens < 0:
        raise EstimateError(f"training tokens must be >= 0, got {train_tokens}")
    if devices < 1 or nodes < 1:
        raise EstimateError(f"devices and nodes must be >= 1, got {devices} and {nodes}")
    kind = device_type.lower()
    if kind not in tables.throughput or kind not in tables.prices:
        raise EstimateError(
            f"device type {device_type!r} is not in the estimate tables; known: "
            f"{', '.join(tables.device_types())} (add it to the throughput and price tables)"
        )
    per_token = flops_per_token(
        model_params, method=method, tuning=tuning, load_in_4bit=load_in_4bit
    )
    flops = per_token * train_tokens
    scaling = 1.0 if nodes == 1 else tables.multi_node_efficiency
    device_seconds = flops / (tables.throughput[kind] * 1e12) / scaling
    gpu_hours = device_seconds / 3600.0
    tokens_per_second = (
        devices * tables.throughput[kind] * 1e12 * scaling / per_token if per_token else 0.0
    )
    return Estimate(
        train_tokens=int(train_tokens),
        model_params=int(model_params),
        device_type=kind,
        devices=devices,
        flops=flops,
        tokens_per_second=tokens_per_second,
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / devices,
        cost=gpu_hours * tables.prices[kind],
        currency=tables.currency,
    )


def params_from_config(config: Mapping[str, Any]) -> int:
    """Parameter count of a decoder-only (Llama/Qwen/Mistral-style) model from its
    ``config.json``, without loading weights: embeddings, attention (with grouped KV
    heads), gated MLP, norms and an untied LM head.

    Raises :class:`EstimateError` naming the missing key.
    """

    def need(key: str) -> int:
        v = config.get(key)
        if not isinstance(v, int) or v <= 0:
            raise EstimateError(f"config.json: {key} missing or not a positive integer")
        return v

    hidden = need("hidden_size")
    layers = need("num_hidden_layers")
    vocab = need("vocab_size")
    inter = config.get("intermediate_size") or 4 * hidden
    heads = need("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * int(inter)
    per_layer = attn + mlp + 2 * hidden
    embed = vocab * hidden
    head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return int(layers * per_layer + embed + head + hidden)


# --------------------------------------------------------------------------- for a job


def gpu_type_for(spec: Any, pool_gpu_type: str | None, default: str) -> str:
    """The device type a job is priced on: ``cpu`` without GPUs, else the job's
    ``resources.gpuType``, its pool's ``gpuType``, or ``default`` (the operator's
    ``defaultGpuType``)."""
    resources = spec.resources
    if resources.gpus_per_node == 0:
        return "cpu"
    return str(resources.gpu_type or pool_gpu_type or default).lower()


def estimate_for_spec(
    spec: Any,
    train_tokens: int,
    model_params: int,
    gpu_type: str,
    tables: EstimateTables,
    *,
    devices: int | None = None,
) -> Estimate:
    """:func:`estimate` with the job's method, tuning and layout (``devices`` defaults to
    nodes × GPUs per node; a CPU job counts its processes). Raises :class:`EstimateError`."""
    resources = spec.resources
    count = devices if devices else resources.nodes * max(resources.gpus_per_node, 1)
    return estimate(
        train_tokens,
        model_params,
        gpu_type,
        devices=count,
        nodes=resources.nodes,
        method=str(getattr(spec.method, "value", spec.method)),
        tuning=str(getattr(spec.tuning.type, "value", spec.tuning.type)),
        load_in_4bit=bool(spec.tuning.load_in_4bit),
        tables=tables,
    )
