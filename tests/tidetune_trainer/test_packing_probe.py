"""Packing on real architectures (finding 3): the load-time probe tells the models whose
packed samples see each other (OPT, Bloom, MPT here) from those whose do not, and agrees
with the per-token losses of real packed batches; the trainer then trains such a model
unpacked and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tidetune_trainer.data.collate import Collator, packing_ok, packing_probe, token_losses
from tidetune_trainer.data.packing import pack, unpacked_rows
from tidetune_trainer.data.records import ChatRecord, Message
from tidetune_trainer.data.tokenize import tokenize_sft

from .conftest import explain, losses, run_trainer, write_chat, write_job
from .realvocab import ARCH_VOCAB, load_tokenizer, model_dir, tiny_model

LEAKY = {"opt", "bloom", "mpt"}


def _per_token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch.get("attention_mask"),
            use_cache=False,
        )
    return token_losses(out.logits, batch["labels"])[batch["loss_weights"] > 0]


@pytest.mark.parametrize("arch", list(ARCH_VOCAB))
def test_probe_agrees_with_packed_versus_separate_losses(arch: str) -> None:
    tok = load_tokenizer(ARCH_VOCAB[arch])
    model = tiny_model(arch, tok).eval()
    recs = [
        ChatRecord(
            f"f:{i}",
            (
                Message("user", f"question {i} " * (i + 1)),
                Message("assistant", "answer " * (3 + i)),
            ),
        )
        for i in range(4)
    ]
    tok.chat_template = None  # the TideTune template; only the packing matters here
    samples, _ = tokenize_sft(recs, tok, 512)
    packed_rows = pack(samples, 512)
    assert len(packed_rows) == 1  # all four samples in one row
    packed = _per_token_losses(model, Collator(tok.pad_token_id or 0, packed=True)(packed_rows))
    alone = torch.cat(
        [
            _per_token_losses(model, Collator(tok.pad_token_id or 0, packed=False)([row]))
            for row in unpacked_rows([samples[i] for i in sorted(range(4))])
        ]
    )
    truth = float((packed.sort().values - alone.sort().values).abs().max())
    leak, drift = packing_probe(model, len(tok))
    assert packing_ok(leak, drift, torch.float32) == (truth < 1e-4), (arch, truth, leak, drift)
    assert packing_ok(leak, drift, torch.float32) == (arch not in LEAKY)


def test_flattened_packed_batches_give_the_same_losses() -> None:
    """The layout used for flash-attention (one row): same per-token losses as the rows."""
    tok = load_tokenizer("llama-bpe")
    model = tiny_model("llama", tok).eval()
    tok.chat_template = None
    recs = [
        ChatRecord(f"f:{i}", (Message("user", "q " * (5 * i + 1)), Message("assistant", "a " * 9)))
        for i in range(6)
    ]
    samples, _ = tokenize_sft(recs, tok, 64)
    rows = pack(samples, 64)
    assert len(rows) >= 2
    rows_batch = Collator(tok.pad_token_id or 0, packed=True)(rows)
    flat_batch = Collator(tok.pad_token_id or 0, packed=True, flatten=True)(rows)
    assert flat_batch["input_ids"].shape == (1, rows_batch["input_ids"].numel())
    a = _per_token_losses(model, rows_batch)
    b = _per_token_losses(model, flat_batch)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.trainer
def test_a_leaky_architecture_trains_unpacked_and_says_why(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "base", "opt", template="qwen2_5", vocab="qwen2")
    data = write_chat(tmp_path / "chat.jsonl", n=16)
    job = write_job(
        tmp_path / "job.yaml",
        data,
        baseModel={"uri": f"file://{base}"},
        hyperparameters={"maxSteps": 2, "maxSeqLength": 128},
    )
    proc = run_trainer(job, tmp_path / "run")
    assert proc.returncode == 0, explain(proc)
    assert len(losses(tmp_path / "run")) == 2
    report = json.loads((tmp_path / "run" / "data-report.json").read_text())
    assert report["packing"] is False
    assert any("packing turned off: OPTForCausalLM" in n for n in report["notes"])
    assert "packing turned off" in proc.stderr
