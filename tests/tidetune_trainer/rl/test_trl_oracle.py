"""Same completions → the same GRPO loss as TRL's ``GRPOTrainer._compute_loss``.

TRL is the oracle: a ``GRPOTrainer`` is built on the same tiny model (from config,
saved to a folder: nothing from a hub) and asked for the loss of the same prompts,
completions, advantages, sampling-policy and reference log-probabilities, for each loss
variant. Old log-probabilities are perturbed so the clip is exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tidetune_trainer.rl import algorithms as A
from tidetune_trainer.rl.objective import RLObjective, RLSettings, left_pad
from tidetune_trainer.rl.rewards import RewardSet

G, C = 4, 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tidetune_trainer.tiny import build_tiny_llama, train_tiny_tokenizer

    texts = [f"what is {a} + {b} ? {a + b}" for a in range(9) for b in range(9)]
    tok = train_tiny_tokenizer(texts, seed=1)
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_llama(tok, seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder), folder


def trl_trainer(
    model: Any, tok: Any, out: Path, loss_type: str, beta: float, eps_high: float
) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=G,
        num_generations=G,
        max_completion_length=C,
        beta=beta,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=eps_high,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[lambda prompts, completions, **k: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "what is 1 + 2 ?"}] * G),
        processing_class=tok,
    )


def inputs(tok: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    prompts = [tok("what is 3 + 4 ?")["input_ids"], tok("what is 12 + 5 ?")["input_ids"]]
    p_ids, p_mask = left_pad([p for p in prompts for _ in range(G // 2)], int(tok.pad_token_id))
    comp = torch.randint(5, 200, (G, C), generator=g)
    lengths = torch.tensor([C, 3, 5, 1])
    c_mask = (torch.arange(C).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return {
        "prompt_ids": p_ids,
        "prompt_mask": p_mask,
        "completion_ids": comp,
        "completion_mask": c_mask,
    }


@pytest.mark.parametrize(
    ("loss_type", "beta", "eps_high"),
    [("grpo", 0.04, 0.2), ("dapo", 0.0, 0.28), ("dr_grpo", 0.1, 0.2), ("grpo", 0.0, 0.3)],
)
def test_grpo_loss_matches_trl(
    tiny: tuple[Any, Any, Path], tmp_path: Path, loss_type: str, beta: float, eps_high: float
) -> None:
    model, tok, _ = tiny
    trainer = trl_trainer(model, tok, tmp_path, loss_type, beta, eps_high)
    trainer.model.eval()
    x = inputs(tok)
    ids = torch.cat([x["prompt_ids"], x["completion_ids"]], dim=1)
    attn = torch.cat([x["prompt_mask"], x["completion_mask"]], dim=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        logps, _, _ = A.completion_logps(model, ids, attn, C, 1.0)
        trl_logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, C)[0]
    m = x["completion_mask"].bool()
    assert torch.allclose(logps[m], trl_logps[m], atol=1e-5)
    old = logps + 0.3 * torch.randn(logps.shape, generator=g)  # exercise both clips
    ref = logps + 0.2 * torch.randn(logps.shape, generator=g)
    adv = torch.tensor([1.2, -0.7, 0.4, -0.9])
    trl_loss = trainer._compute_loss(
        trainer.model,
        {
            **x,
            "advantages": adv,
            "old_per_token_logps": old,
            "ref_per_token_logps": ref,
            "num_items_in_batch": x["completion_mask"].sum(),
        },
    )
    settings = RLSettings(
        loss_type=loss_type,
        num_generations=G,
        max_completion_length=C,
        beta=beta,
        epsilon=0.2,
        epsilon_high=eps_high,
    )
    objective = RLObjective(settings, RewardSet([]), tok, [int(tok.eos_token_id)])
    batch = {
        "input_ids": ids,
        "attention_mask": attn,
        "completion_mask": x["completion_mask"].float(),
        "keep": torch.ones(G),
        "advantages": adv,
        "old_logps": old,
        "ref_logps": ref,
    }

    class Engine:
        pass

    engine = Engine()
    engine.model = model  # type: ignore[attr-defined]
    loss_sum, _ = objective.loss_sum(engine, batch)
    ours = loss_sum / objective.units(batch)
    assert abs(float(ours) - float(trl_loss)) < 1e-5, (float(ours), float(trl_loss))
    stats = objective.step_stats()
    assert 0 < stats["clipFraction"][0] < stats["clipFraction"][1]


def test_group_advantages_and_overlong_penalty() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, std = A.group_advantages(r, 4, scale=True)
    s = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(adv[:4], (r[:4] - 0.5) / (s + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4)) and float(std[1]) == 0.0
    adv_dr, _ = A.group_advantages(r, 4, scale=False)
    assert torch.allclose(adv_dr[:4], r[:4] - 0.5)
    pen = A.overlong_penalty(torch.tensor([10, 12, 14, 16]), 16, 4)
    assert pen.tolist() == [0.0, 0.0, -0.5, -1.0]


def test_gae_matches_a_hand_computation() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 0.75, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = A.gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.75
    d1 = 0.0 + gamma * 0.75 - 0.25
    d0 = 0.0 + gamma * 0.25 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.25, a2 + 0.75, 0.0]]))
