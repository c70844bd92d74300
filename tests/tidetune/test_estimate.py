"""tidetune.estimate: FLOPs rule, tables, errors. Pure, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidetune.estimate import (
    DEFAULT_TABLES,
    EstimateError,
    EstimateTables,
    estimate,
    flops_per_token,
    load_tables,
    params_from_config,
)


def test_flops_per_token_by_method_and_tuning() -> None:
    n = 1_000_000
    assert flops_per_token(n, tuning="full") == 6 * n
    assert flops_per_token(n, tuning="lora") == 4 * n
    assert flops_per_token(n, method="dpo", tuning="full") == 8 * n
    assert flops_per_token(n, tuning="lora", load_in_4bit=True) == 5 * n
    with pytest.raises(EstimateError, match=r"spec\.method"):
        flops_per_token(n, method="rlhf")


def test_estimate_gpu_hours_and_cost() -> None:
    tables = EstimateTables(throughput={"x1": 100.0}, prices={"x1": 2.0}, currency="EUR")
    # 1e9 params, full tuning: 6e9 FLOPs/token; 6e4 tokens → 3.6e14 FLOPs → 3.6 s at 100 TFLOP/s
    est = estimate(60_000, 1_000_000_000, "X1", devices=4, tuning="full", tables=tables)
    assert est.flops == pytest.approx(3.6e14)
    assert est.gpu_hours == pytest.approx(3.6 / 3600)
    assert est.wall_hours == pytest.approx(3.6 / 3600 / 4)
    assert est.cost == pytest.approx(2.0 * 3.6 / 3600)
    assert est.to_status() == {
        "trainTokens": 60_000,
        "gpuHours": round(0.001, 6),
        "cost": round(0.002, 4),
        "currency": "EUR",
    }
    multi = estimate(60_000, 1_000_000_000, "x1", devices=8, nodes=2, tuning="full", tables=tables)
    assert multi.gpu_hours == pytest.approx(est.gpu_hours / 0.9)


def test_unknown_device_type_lists_the_known_ones() -> None:
    with pytest.raises(EstimateError, match="h100") as err:
        estimate(10, 10, "tpu-v9")
    assert "tpu-v9" in str(err.value)


def test_load_tables_overrides_and_validates(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("currency: CNY\nthroughput: {h100: 300}\nprices: {h100: 20, mygpu: 1}\n")
    tables = load_tables(f)
    assert tables.currency == "CNY" and tables.throughput["h100"] == 300
    assert tables.throughput["a100"] == DEFAULT_TABLES.throughput["a100"]  # defaults kept
    assert "mygpu" not in tables.device_types()  # a price without a throughput
    bad = tmp_path / "bad.yaml"
    bad.write_text("throughput: {h100: 0}\n")
    with pytest.raises(EstimateError, match=r"bad.yaml: throughput.h100: must be > 0"):
        load_tables(bad)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("speed: {}\n")
    with pytest.raises(EstimateError, match="unknown key"):
        load_tables(unknown)


def test_params_from_config_matches_a_llama() -> None:
    cfg = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "intermediate_size": 176,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    }
    # embeddings 65536 + per layer (q,o 2·64·64 + k,v 2·64·32 + mlp 3·64·176 + 2 norms) + norm
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176 + 2 * 64
    assert params_from_config(cfg) == 1024 * 64 + 2 * per_layer + 64
    with pytest.raises(EstimateError, match="hidden_size"):
        params_from_config({})
