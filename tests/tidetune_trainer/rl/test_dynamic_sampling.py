"""DAPO's dynamic sampling: groups whose rewards all agree are replaced by groups sampled
from the next prompts in the data order, up to ``maxResampleRounds`` extra rounds.

The objective runs on the tiny model with a stand-in engine; the reward is constant for
the prompts marked ``fixed`` (their groups carry no signal) and varies with the
completion's text otherwise.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tidetune_trainer.rl import algorithms as A
from tidetune_trainer.rl.data import RlPrompt
from tidetune_trainer.rl.objective import RLObjective, RLSettings, Sampled, left_pad, regroup
from tidetune_trainer.rl.rewards import RewardSet, Rule

G = 4


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from tidetune_trainer.tiny import build_tiny_llama, train_tiny_tokenizer

    texts = [f"what is {a} + {b} ? {a + b}" for a in range(9) for b in range(9)]
    tok = train_tiny_tokenizer(texts, seed=3)
    return build_tiny_llama(tok, seed=3).eval(), tok


class Engine:
    """What the rollout needs of the engine, on one CPU rank."""

    rank = 0
    world_size = 1
    is_main = True
    deepspeed = False
    device = torch.device("cpu")
    cfg = SimpleNamespace(zero_stage=0)

    def __init__(self, model: Any) -> None:
        self.model = model
        self.asked = 0

    def train_mode(self, on: bool) -> None:
        pass

    def unwrapped(self) -> Any:
        return self.model

    def forward_context(self) -> Any:
        return contextlib.nullcontext()

    def any_rank(self, flag: bool) -> bool:
        self.asked += 1
        return flag


def score(
    prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> list[float]:
    return [
        1.0 if fixed else float(zlib.crc32(c.encode()) % 997)
        for c, fixed in zip(completions, columns["fixed"], strict=True)
    ]


def prompt(tok: Any, i: int, fixed: bool) -> RlPrompt:
    text = f"what is {i} + {i + 1} ?"
    ids = (int(tok.bos_token_id), *tok(text, add_special_tokens=False)["input_ids"])
    return RlPrompt(ids, text, {"fixed": fixed})


def objective(tok: Any, rounds: int | None, loss: str = "dapo") -> RLObjective:
    settings = RLSettings(
        loss_type=loss,
        num_generations=G,
        max_completion_length=6,
        beta=0.04,
        seed=5,
        max_resample_rounds=rounds if loss == "dapo" else None,
    )
    # no stop token: every completion runs to the end, so the overlong penalty is the
    # same for all and a fixed prompt's group has no signal
    return RLObjective(settings, RewardSet([Rule("r", 1.0, score)]), tok, [])


def run_step(
    obj: RLObjective, engine: Engine, first: list[list[RlPrompt]], extra: list[list[RlPrompt]]
) -> tuple[list[dict[str, torch.Tensor]], list[list[RlPrompt]], dict[str, float]]:
    """One step's rollout: ``first`` micro-batches, then ``extra`` ones on request."""
    batches = [obj.collate(rows) for rows in first]
    taken: list[list[RlPrompt]] = []
    source: Iterator[list[RlPrompt]] = iter(extra)

    def more() -> dict[str, torch.Tensor]:
        rows = next(source)
        taken.append(rows)
        return obj.collate(rows)

    out = obj.rollout(engine, batches, step=0, more=more)
    stats = {k: s / n for k, (s, n) in obj.step_stats().items()}
    return out, taken, stats


def prompts_of(batch: dict[str, torch.Tensor], tok: Any) -> list[str]:
    """Each group's prompt text in a prepared micro-batch."""
    c = batch["completion_mask"].shape[1]
    ids, attn = batch["input_ids"][:, :-c], batch["attention_mask"][:, :-c]
    return [
        tok.decode(ids[r][attn[r].bool()].tolist(), skip_special_tokens=True)
        for r in range(0, ids.shape[0], G)
    ]


def test_groups_without_a_signal_are_replaced_by_the_next_prompts(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    p = [prompt(tok, i, fixed=i in (0, 1, 3, 7)) for i in range(10)]
    engine = Engine(model)
    obj = objective(tok, rounds=4)
    # two micro-batches of two prompts; three of the four carry no signal
    out, taken, stats = run_step(
        obj, engine, [[p[0], p[1]], [p[2], p[3]]], [[p[4], p[5]], [p[6], p[7]], [p[8], p[9]]]
    )
    assert taken == [[p[4], p[5]], [p[6], p[7]]]  # enough after two rounds
    assert len(out) == 2 and all(b["input_ids"].shape[0] == 2 * G for b in out)
    got = [t for b in out for t in prompts_of(b, tok)]
    assert got == [p[i].text for i in (2, 4, 5, 6)]  # signal first, in sampling order
    for b in out:
        assert torch.equal(b["keep"], torch.ones(2 * G))
        assert bool((b["advantages"].view(-1, G).abs().sum(1) > 0).all())
        # the reference's log-probabilities belong to the re-batched rows: KL starts at 0
        c = b["completion_mask"].shape[1]
        with torch.no_grad():
            lp, _, _ = A.completion_logps(model, b["input_ids"], b["attention_mask"], c, 1.0)
        m = b["completion_mask"].bool()
        assert torch.allclose(b["ref_logps"][m], lp[m], atol=1e-5)
    assert stats["droppedGroups"] == 4  # 0, 1, 3 and 7
    assert stats["resampledGroups"] == 4 and stats["resampleRounds"] == 2
    assert stats["unfilledGroups"] == 0
    assert obj.units(out[0]) + obj.units(out[1]) == float(
        sum(b["completion_mask"].sum() for b in out)
    )


def test_at_the_cap_the_step_trains_on_what_it_has(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    fixed = [prompt(tok, i, fixed=True) for i in range(8)]
    varying = prompt(tok, 9, fixed=False)
    engine = Engine(model)
    obj = objective(tok, rounds=1)
    out, taken, stats = run_step(
        obj, engine, [[fixed[0], varying], [fixed[1], fixed[2]]], [[fixed[3], fixed[4]]] * 3
    )
    assert len(taken) == 1 and engine.asked == 1  # one extra round, then the cap
    assert [t for b in out for t in prompts_of(b, tok)] == [
        varying.text,
        fixed[0].text,
        fixed[1].text,
        fixed[2].text,
    ]
    keep = torch.cat([b["keep"] for b in out])
    assert keep.tolist() == [1.0] * G + [0.0] * 3 * G  # the rest is left out of the loss
    assert stats["unfilledGroups"] == 3 and stats["resampleRounds"] == 1
    assert stats["droppedGroups"] == 5 and stats["resampledGroups"] == 2


@pytest.mark.parametrize(("loss", "rounds"), [("dapo", 0), ("grpo", None)])
def test_no_resampling_without_dapo_or_with_zero_rounds(
    tiny: tuple[Any, Any], loss: str, rounds: int | None
) -> None:
    model, tok = tiny
    p = [prompt(tok, i, fixed=True) for i in range(4)]
    obj = objective(tok, rounds=rounds, loss=loss)
    engine = Engine(model)
    out, taken, stats = run_step(obj, engine, [[p[0], p[1]]], [[p[2], p[3]]])
    assert taken == [] and len(out) == 1
    assert [t for t in prompts_of(out[0], tok)] == [p[0].text, p[1].text]
    if loss == "dapo":
        assert stats["droppedGroups"] == 2 and stats["resampleRounds"] == 0
        assert out[0]["keep"].sum() == 0
    else:
        assert "droppedGroups" not in stats and out[0]["keep"].sum() == 2 * G


def test_regroup_pads_again_and_keeps_each_row() -> None:
    def sampled(prompts: list[list[int]], comps: list[list[int]], keep: list[float]) -> Sampled:
        p_ids, p_mask = left_pad(prompts, 0)
        width = max(len(c) for c in comps)
        c_ids = torch.zeros((len(comps), width), dtype=torch.long)
        c_mask = torch.zeros((len(comps), width), dtype=torch.long)
        for i, c in enumerate(comps):
            c_ids[i, : len(c)] = torch.tensor(c)
            c_mask[i, : len(c)] = 1
        n = len(comps)
        return Sampled(
            p_ids,
            p_mask,
            c_ids,
            c_mask,
            torch.arange(n, dtype=torch.float32),
            c_mask.sum(-1),
            torch.tensor(keep),
            torch.arange(n, dtype=torch.float32) / 10,
            2,
        )

    a = sampled([[1, 2], [1, 2], [3], [3]], [[9], [8, 7], [6], [5]], [0, 0, 1, 1])
    b = sampled([[4, 4, 4], [4, 4, 4]], [[1, 2, 3], [4]], [1, 1])
    (x, y) = regroup([a, b], [2, 1], pad_id=0, g=2)
    # the groups with a signal first (a's second, then b's), padded to the widest
    assert x.prompt_ids.tolist() == [[0, 0, 3], [0, 0, 3], [4, 4, 4], [4, 4, 4]]
    assert x.prompt_mask.tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]]
    assert x.completion_ids.tolist() == [[6, 0, 0], [5, 0, 0], [1, 2, 3], [4, 0, 0]]
    assert x.completion_mask.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    assert x.keep.tolist() == [1, 1, 1, 1] and x.rewards.tolist() == [2.0, 3.0, 0.0, 1.0]
    assert x.advantages is not None
    assert x.advantages.tolist() == pytest.approx([0.2, 0.3, 0.0, 0.1])
    assert x.lengths.tolist() == [1, 1, 3, 1]
    # then the one without
    assert y.prompt_ids.tolist() == [[1, 2], [1, 2]]
    assert y.completion_ids.tolist() == [[9, 0], [8, 7]] and y.keep.tolist() == [0, 0]
