"""Batched sampling with a KV cache over left-padded prompts samples what a plain
forward over the whole sequence would, stops per row and is reproducible per step."""

from __future__ import annotations

import torch

from tidetune_trainer.rl.objective import generate, left_pad, step_generator
from tidetune_trainer.tiny import build_tiny_llama, train_tiny_tokenizer


def test_kv_cache_sampling_matches_full_forwards() -> None:
    tok = train_tiny_tokenizer([f"w{i} w{i + 1} w{i + 2}" for i in range(50)], seed=0)
    model = build_tiny_llama(tok, seed=0).eval()
    prompts = [tok(t)["input_ids"] for t in ("w1 w2 w3", "w4", "w7 w8")]
    ids, mask = left_pad([[tok.bos_token_id, *p] for p in prompts], tok.pad_token_id)
    stop = [5, 9]
    comp, cmask = generate(
        model,
        ids,
        mask,
        max_new_tokens=12,
        temperature=0.9,
        stop_ids=stop,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(7),
    )
    # the same draws, recomputing every position from scratch (no cache)
    g = torch.Generator().manual_seed(7)
    seq, att = ids.clone(), mask.clone()
    alive = torch.ones(3, dtype=torch.bool)
    want = []
    with torch.no_grad():
        for _ in range(comp.shape[1]):
            logits = model(input_ids=seq, attention_mask=att, use_cache=False).logits[:, -1]
            nxt = torch.multinomial(torch.softmax(logits / 0.9, -1), 1, generator=g).squeeze(1)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, tok.pad_token_id))
            want.append(nxt)
            alive &= ~torch.isin(nxt, torch.tensor(stop))
            seq = torch.cat([seq, nxt[:, None]], 1)
            att = torch.cat([att, torch.ones(3, 1, dtype=att.dtype)], 1)
    assert torch.equal(comp, torch.stack(want, 1))
    for row, m in zip(comp, cmask, strict=True):
        n = int(m.sum())
        hits = [i for i, t in enumerate(row.tolist()) if t in stop]
        assert n == (hits[0] + 1 if hits else comp.shape[1])
        assert all(t == tok.pad_token_id for t in row[n:].tolist())


def test_step_generators_are_independent_and_reproducible() -> None:
    a = torch.rand(4, generator=step_generator(3, 10, 0, 1, torch.device("cpu")))
    b = torch.rand(4, generator=step_generator(3, 10, 0, 1, torch.device("cpu")))
    c = torch.rand(4, generator=step_generator(3, 10, 1, 1, torch.device("cpu")))
    d = torch.rand(4, generator=step_generator(3, 11, 0, 1, torch.device("cpu")))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_sampling_goes_on_while_any_rank_is_still_sampling() -> None:
    """Under ZeRO-3 each forward is a collective: a rank whose rows have all stopped keeps
    stepping (padding) until every rank is done, as ``any_rank`` reports."""
    tok = train_tiny_tokenizer([f"w{i} w{i + 1}" for i in range(30)], seed=0)
    model = build_tiny_llama(tok, seed=0).eval()
    ids, mask = left_pad([[tok.bos_token_id, 7, 8]] * 2, tok.pad_token_id)
    every_token = list(range(len(tok)))  # each row stops at its first token
    kw = {
        "max_new_tokens": 6,
        "temperature": 1.0,
        "stop_ids": every_token,
        "pad_id": tok.pad_token_id,
    }
    alone, _ = generate(model, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert alone.shape[1] == 1
    asked: list[bool] = []

    def others_still_going(mine: bool) -> bool:
        asked.append(mine)
        return len(asked) < 4  # another rank samples three tokens more

    comp, cmask = generate(
        model,
        ids,
        mask,
        generator=torch.Generator().manual_seed(0),
        any_rank=others_still_going,
        **kw,
    )
    assert comp.shape[1] == 4 and asked == [False] * 4
    assert cmask[:, 0].tolist() == [1, 1] and int(cmask[:, 1:].sum()) == 0
    assert torch.equal(comp[:, 0], alone[:, 0])
    assert (comp[:, 1:] == tok.pad_token_id).all()
