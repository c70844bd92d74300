"""Collation and the packing equivalence: a packed batch gives the same per-token losses
as the same samples unpacked, with the tiny Llama on CPU (float32, 1e-5)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from tidetune_trainer.data import (
    ChatRecord,
    Message,
    PreferenceRecord,
    TextRecord,
    pack,
    tokenize_preference,
    tokenize_sft,
)
from tidetune_trainer.data.collate import (
    IGNORE_INDEX,
    Collator,
    collate_preference,
    prepare_model_for_packing,
    token_losses,
    weighted_loss,
)
from tidetune_trainer.data.packing import PackedRow, unpacked_rows
from tidetune_trainer.data.tokenize import TokenizedSample

from .conftest import WORDS

pytestmark = pytest.mark.trainer


def _records(n: int, seed: int = 0) -> list[ChatRecord]:
    rng = random.Random(seed)

    def says(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k)))

    out = []
    for i in range(n):
        msgs = [Message("system", says(5))] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            msgs.append(Message("user", says(12)))
            msgs.append(Message("assistant", says(20), rng.choice([1.0, 1.0, 0.0, 2.0, 0.5])))
        if all(m.loss_weight == 0 for m in msgs if m.role == "assistant"):
            msgs[-1] = Message("assistant", msgs[-1].content, 1.0)
        out.append(ChatRecord(f"f:{i + 1}", tuple(msgs)))
    return out


@pytest.fixture(scope="module")
def model(tiny_tokenizer: Any) -> Any:
    from tidetune_trainer.tiny import build_tiny_llama

    return build_tiny_llama(tiny_tokenizer, seed=0).eval()


def _forward_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
    with torch.no_grad():
        logits = model(**inputs).logits
    return token_losses(logits, batch["labels"])


def _per_sample(rows: list[PackedRow], losses: torch.Tensor) -> list[list[float]]:
    """Per-token losses of each sample, in sample order within rows."""
    out: list[list[float]] = []
    for r, row in enumerate(rows):
        start = 0
        for n in row.seq_lengths:
            out.append(losses[r, start : start + n].tolist())
            start += n
    return out


def _by_origin(samples: list[TokenizedSample], rows: list[PackedRow]) -> list[str]:
    # recover sample identity from the row contents (ids + weights are unique here)
    keyed = {(tuple(s.input_ids), tuple(s.loss_weights)): s.origin for s in samples}
    order: list[str] = []
    for row in rows:
        start = 0
        for n in row.seq_lengths:
            key = (
                tuple(row.input_ids[start : start + n]),
                tuple(row.loss_weights[start : start + n]),
            )
            order.append(keyed[key])
            start += n
    return order


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked_per_token(model: Any, tiny_tokenizer: Any, attn: str) -> None:
    model.config._attn_implementation = attn
    try:
        samples, _ = tokenize_sft(_records(24), tiny_tokenizer, 128)
        rows = pack(samples, 128)
        assert len(rows) < len(samples) and any(len(r.seq_lengths) >= 3 for r in rows)
        packed = Collator(tiny_tokenizer.pad_token_id, packed=True, pad_to_multiple_of=8)(rows)
        assert "attention_mask" not in packed
        ur = unpacked_rows(samples)
        unpacked = Collator(tiny_tokenizer.pad_token_id, packed=False)(ur)

        pl = _per_sample(rows, _forward_losses(model, packed))
        ul = _per_sample(ur, _forward_losses(model, unpacked))
        origin_of = {o: i for i, o in enumerate(_by_origin(samples, ur))}
        worst = 0.0
        for sample_losses, origin in zip(pl, _by_origin(samples, rows), strict=True):
            ref = ul[origin_of[origin]]
            assert len(ref) == len(sample_losses)
            worst = max(worst, max(abs(a - b) for a, b in zip(sample_losses, ref, strict=True)))
        assert worst < 1e-5, worst

        # the weighted training loss and transformers' own loss agree too
        lp = weighted_loss(
            model(
                **{k: v for k, v in packed.items() if k not in ("labels", "loss_weights")}
            ).logits,
            packed["labels"],
            packed["loss_weights"],
        )
        lu = weighted_loss(
            model(
                **{k: v for k, v in unpacked.items() if k not in ("labels", "loss_weights")}
            ).logits,
            unpacked["labels"],
            unpacked["loss_weights"],
        )
        assert abs(lp.item() - lu.item()) < 1e-5
        with torch.no_grad():
            hp = model(**{k: v for k, v in packed.items() if k != "loss_weights"}).loss
            hu = model(**{k: v for k, v in unpacked.items() if k != "loss_weights"}).loss
        assert abs(hp.item() - hu.item()) < 1e-5
    finally:
        model.config._attn_implementation = "sdpa"


def test_no_attention_across_samples(model: Any) -> None:
    a = TokenizedSample(list(range(10, 30)), [0.0] + [1.0] * 19, "a")
    b = TokenizedSample(list(range(40, 55)), [0.0] + [1.0] * 14, "b")
    b2 = TokenizedSample(list(range(60, 75)), [0.0] + [1.0] * 14, "b2")
    col = Collator(0, packed=True)
    x = col(pack([a, b], 64))
    y = col(pack([a, b2], 64))
    assert x["position_ids"][0].tolist() == list(range(20)) + list(range(15))
    with torch.no_grad():
        lx = model(input_ids=x["input_ids"], position_ids=x["position_ids"]).logits
        ly = model(input_ids=y["input_ids"], position_ids=y["position_ids"]).logits
    # the first sample (a) is at the front of both rows: changing b must not change it
    assert torch.equal(lx[0, :20], ly[0, :20])


def test_kv_cache_would_break_packing_and_prepare_fixes_it(tiny_tokenizer: Any) -> None:
    from tidetune_trainer.tiny import build_tiny_llama

    m = build_tiny_llama(tiny_tokenizer, seed=0).eval()
    m.config.use_cache = True  # as most pretrained configs ship
    samples, _ = tokenize_sft(_records(6), tiny_tokenizer, 256)
    rows = pack(samples, 256)
    packed = Collator(tiny_tokenizer.pad_token_id, packed=True)(rows)
    unpacked = Collator(tiny_tokenizer.pad_token_id, packed=False)(unpacked_rows(samples))
    ref = _forward_losses(m, unpacked).sum().item()
    broken = _forward_losses(m, packed).sum().item()
    assert abs(broken - ref) > 1e-3  # with a cache, transformers attends across samples
    prepare_model_for_packing(m)
    assert abs(_forward_losses(m, packed).sum().item() - ref) < 1e-4


def test_unpacked_collation_pads_and_masks() -> None:
    rows = unpacked_rows(
        [
            TokenizedSample([5, 6, 7], [0.0, 1.0, 0.0]),
            TokenizedSample([8, 9, 10, 11, 12], [0.0, 0.5, 1.0, 1.0, 2.0]),
        ]
    )
    b = Collator(pad_token_id=0, packed=False, pad_to_multiple_of=8)(rows)
    assert b["input_ids"].shape == (2, 8)
    assert b["input_ids"][0].tolist() == [5, 6, 7, 0, 0, 0, 0, 0]
    assert b["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert b["labels"][0].tolist() == [IGNORE_INDEX, 6] + [IGNORE_INDEX] * 6
    assert b["loss_weights"][1].tolist()[:5] == [0.0, 0.5, 1.0, 1.0, 2.0]
    assert b["position_ids"][1].tolist() == list(range(8))


def test_packed_padding_is_a_separate_sequence() -> None:
    rows = pack(
        [
            TokenizedSample([1, 2, 3], [0.0, 1.0, 1.0]),
            TokenizedSample([4, 5, 6, 7, 8], [0.0, 1, 1, 1, 1]),
        ],
        5,
    )
    b = Collator(pad_token_id=0, packed=True)(rows)
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX]


def test_weighted_loss_scales_by_weight() -> None:
    logits = torch.randn(1, 4, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 3, 4]])
    base = token_losses(logits, labels)
    w = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    lab = torch.where(w > 0, labels, IGNORE_INDEX)
    got = weighted_loss(logits, lab, w)
    assert got.item() == pytest.approx((base[0, 1] + 2 * base[0, 2]).item() / 2, rel=1e-6)


def test_preference_collation(tiny_tokenizer: Any) -> None:
    recs = [
        PreferenceRecord("f:1", (Message("user", "the fox"),), "jumps over the dog", "no", 1, 0),
        PreferenceRecord(
            "f:2", (Message("user", "a lazy dog sleeps"),), "yes", "seven wizards judge", 2, 1
        ),
    ]
    pairs, _ = tokenize_preference(recs, tiny_tokenizer, 128)
    b = collate_preference(pairs, tiny_tokenizer.pad_token_id)
    assert b["input_ids"].shape[0] == 4
    for row, (p, which) in enumerate(
        [(pairs[0], "c"), (pairs[1], "c"), (pairs[0], "r"), (pairs[1], "r")]
    ):
        ans = p.chosen_ids if which == "c" else p.rejected_ids
        n = len(p.prompt_ids) + len(ans)
        assert b["input_ids"][row, :n].tolist() == p.prompt_ids + ans
        assert b["loss_weights"][row].sum().item() == len(ans)
        assert b["attention_mask"][row].sum().item() == n


def test_text_samples_collate(tiny_tokenizer: Any) -> None:
    samples, _ = tokenize_sft([TextRecord("f:1", "river tides " * 30)], tiny_tokenizer, 16)
    rows = pack(samples, 16)
    b = Collator(tiny_tokenizer.pad_token_id, packed=True)(rows)
    assert b["input_ids"].shape[1] == 16
