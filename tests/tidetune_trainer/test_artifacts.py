"""Exported models load back with transformers/peft and give the trained model's logits;
the manifest lists every file with size and sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tidetune_trainer.artifacts import ArtifactWriter, read_manifest
from tidetune_trainer.config import TrainConfig
from tidetune_trainer.engine import Engine, seed_everything

from .conftest import tiny_llama, train_on_random_tokens

pytestmark = pytest.mark.trainer


def _train(cfg: TrainConfig, base_dir: Path) -> Engine:
    model = tiny_llama(96)
    model.save_pretrained(base_dir)  # the "base model" a user would point at
    acc = Engine.make_accelerator(cfg)
    seed_everything(1)
    engine = Engine.create(cfg, acc, model, total_steps=4)
    train_on_random_tokens(engine, 4, vocab_size=96, shape=(2, 12), seed=2)
    engine.train_mode(False)
    return engine


PROBE = torch.tensor([[5, 17, 33, 2, 90, 61, 7, 8]])


def _logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits  # type: ignore[no-any-return]


def test_lora_adapter_and_merged_model_reload_with_same_logits(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(
        zero_stage=0,
        tuning="lora",
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.1,
        learning_rate=1e-2,
        warmup_steps=0,
        batch_size=2,
    )
    engine = _train(cfg, tmp_path / "base")
    live = _logits(engine.unwrapped())
    engine.export_model(tmp_path / "adapter", tokenizer=None)
    engine.export_model(tmp_path / "merged", tokenizer=None, merge=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter only

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    untrained = _logits(base)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.allclose(_logits(reloaded), live, atol=1e-5)
    assert not torch.allclose(untrained, live, atol=1e-3)  # the adapter changed something

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(merged), live, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def test_full_model_reloads_with_same_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(zero_stage=0, tuning="full", learning_rate=1e-2, warmup_steps=0, batch_size=2)
    engine = _train(cfg, tmp_path / "base")
    live = _logits(engine.unwrapped())
    engine.export_model(tmp_path / "full", tokenizer=None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert torch.allclose(_logits(reloaded), live, atol=1e-6)


def test_manifest_lists_files_with_size_and_sha256(tmp_path: Path) -> None:
    src = tmp_path / "final"
    src.mkdir()
    (src / "a.bin").write_bytes(b"alpha")
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_text("beta")
    writer = ArtifactWriter(f"file://{tmp_path / 'out'}", "ns", "job", "u1")
    entry = writer.add_dir("final", "model", src)
    manifest = writer.write_manifest({"method": "sft"})
    root = tmp_path / "out" / "ns" / "job" / "u1"
    assert (root / "final" / "sub" / "b.txt").read_text() == "beta"
    body = read_manifest(f"file://{root}")
    assert body["job"] == {"namespace": "ns", "name": "job", "uid": "u1"}
    (art,) = body["artifacts"]
    assert art["name"] == "final" and art["sizeBytes"] == 9
    files = {f["path"]: f for f in art["files"]}
    assert files["a.bin"]["sha256"] == hashlib.sha256(b"alpha").hexdigest()
    assert files["sub/b.txt"]["sizeBytes"] == 4
    listing = "".join(f"{files[p]['sha256']}  {p}\n" for p in sorted(files))
    assert art["sha256"] == entry.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    raw = (root / "manifest.json").read_bytes()
    assert manifest.sha256 == hashlib.sha256(raw).hexdigest()
    assert json.loads(raw)["method"] == "sft"
