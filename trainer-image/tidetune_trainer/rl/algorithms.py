"""The math of GRPO (and its DAPO / Dr. GRPO variants) and PPO, on plain tensors.

Shapes: ``N`` completions, ``C`` completion positions; ``mask`` is ``[N, C]`` (1 on a
completion's tokens up to and including its stop token). Every loss function returns
``(loss_sum, units)``: the loop divides the step's summed loss by the step's summed units
(across micro-batches and ranks), which gives exactly:

- ``grpo``: the mean over completions of each completion's mean token loss
  (units = completions);
- ``dapo``: the mean over all completion tokens of the step (units = tokens);
- ``dr_grpo``: ``Σ token losses / (completions × maxCompletionLength)``
  (units = completions × maxCompletionLength);
- ``ppo``: the mean over all completion tokens (units = tokens).

These are TRL ``GRPOTrainer``'s definitions (``_compute_loss``), which the tests use as
the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClipSettings:
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0


def completion_logps(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    *,
    entropy: bool = False,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log-probabilities of the last ``completion_len`` tokens ``[N, C]`` under
    ``model`` (logits divided by ``temperature``), optionally their entropies and the
    last hidden states of the positions that predict them."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, -completion_len - 1 : -1, :].float() / temperature
    targets = input_ids[:, -completion_len:]
    logp_all = F.log_softmax(logits, dim=-1)
    logps = torch.gather(logp_all, -1, targets.unsqueeze(-1)).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    h = out.hidden_states[-1][:, -completion_len - 1 : -1, :] if hidden else None
    return logps, ent, h


def group_advantages(
    rewards: torch.Tensor, group: int, *, scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages: reward minus its group's mean, divided by the group's std
    (unbiased, + 1e-4) when ``scale``. Returns (advantages, per-group std)."""
    r = rewards.view(-1, group)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(mean)
    adv = r - mean
    if scale:
        adv = adv / (std + 1e-4)
    return adv.reshape(-1), std.reshape(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to ``max_len − buffer`` tokens, then
    linearly down to −1 at ``max_len``."""
    start = max_len - buffer
    pen = (start - lengths.float()) / max(buffer, 1)
    return torch.where(lengths.float() <= start, torch.zeros_like(pen), pen.clamp(min=-1.0))


def clipped_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    clip: ClipSettings,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss (+ β·KL to the reference: the k3 estimator times
    the policy ratio, TRL's bias-corrected KL) ``[N, C]`` and per-token diagnostics
    (``kl``, ``clipped``)."""
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - clip.epsilon_low, 1 + clip.epsilon_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    diag: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        low = (ratio < 1 - clip.epsilon_low) & (adv < 0)
        high = (ratio > 1 + clip.epsilon_high) & (adv > 0)
        diag["clipped"] = (low | high).float()
    if ref_logps is not None and clip.beta != 0.0:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        diag["kl"] = kl.detach()
        # importance-sampling correction: the tokens were sampled by the old policy
        loss = loss + clip.beta * kl * ratio
    elif ref_logps is not None:
        diag["kl"] = (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1).detach()
    return loss, diag


def reduce_loss(
    token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int
) -> tuple[torch.Tensor, float]:
    """(summed loss, units) of one micro-batch for ``loss_type`` (see the module doc)."""
    m = mask.to(token_loss.dtype)
    if loss_type == "grpo":
        per_seq = (token_loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        return per_seq.sum(), float(token_loss.shape[0])
    if loss_type == "dr_grpo":
        return (token_loss * m).sum() / max_completion_length, float(token_loss.shape[0])
    if loss_type in ("dapo", "ppo"):
        return (token_loss * m).sum(), float(m.sum())
    raise ValueError(f"unknown loss type {loss_type!r}")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens ``[N, C]``: (advantages,
    returns). Positions after a completion's end contribute nothing."""
    m = mask.to(values.dtype)
    n, c = values.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(n, dtype=values.dtype, device=values.device)
    for t in reversed(range(c)):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < c else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (m[:, t + 1] if t + 1 < c else 0.0)
        adv[:, t] = last * m[:, t]
    return adv, (adv + values) * m


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    count = m.sum().clamp(min=1.0)
    mean = (x * m).sum() / count
    var = (((x - mean) * m) ** 2).sum() / count
    return (x - mean) * torch.rsqrt(var + 1e-8) * m


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """PPO's clipped value loss per token: ½·max((v−R)², (clip(v, v_old ± ε)−R)²)."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
