"""GRPO (grpo / dapo / dr_grpo) and PPO as objectives of the shared training loop.

The loop (:mod:`tidetune_trainer.loop`) collates each micro-batch's prompts, then calls
:meth:`RLObjective.rollout` once per optimizer step: for every prompt it samples
``numGenerations`` completions with the current policy (one batched generation per
micro-batch with a KV cache, seeded by ``(seed, step, rank, micro-batch)`` so a resumed
run samples exactly what an uninterrupted one would), scores them with the reward
rules, and computes what the loss needs (advantages, the sampling policy's and the
reference's log-probabilities, PPO's values and returns). The loop then runs
``epochsPerRollout`` optimizer updates on that rollout.

GRPO: advantages are group-relative (reward − group mean, / group std except for
dr_grpo); ``dapo`` clips asymmetrically (epsilonHigh, default 0.28), adds the soft
overlong penalty to the reward and samples dynamically (below). PPO: a value head on the
policy's last hidden state, per-token rewards ``−β·(log π_old − log π_ref)`` plus the
score on the last token, GAE, whitened advantages, clipped policy and value losses.

Dynamic sampling (``dapo``, DAPO's §3.2). A group whose rewards all agree has zero
advantages: it carries no signal and is left out of the loss. After the step's own
micro-batches are sampled, while any rank has fewer groups with a signal than the step
has prompts, every rank (in lock-step, as ZeRO-3 needs) takes the next micro-batch of
prompts in the data order (the loop's ``more``: the data position advances, so a
checkpoint records it and a resumed run takes the same prompts) and samples it, seeded
like the others by ``(seed, step, rank, round)``; at most ``maxResampleRounds`` extra
rounds. The step then trains on the first groups with a signal, in sampling order,
re-batched into its ``gradientAccumulationSteps`` micro-batches of ``batchSize``
prompts; at the cap, groups without a signal fill the rest (left out of the loss, as
before: ``unfilledGroups``). The log-probabilities the loss needs are computed on the
final micro-batches. Metrics: ``droppedGroups`` (groups without a signal sampled in the
step), ``resampledGroups`` (groups sampled in extra rounds), ``resampleRounds`` and
``unfilledGroups`` — totals over ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tidetune_trainer.rl import algorithms as A
from tidetune_trainer.rl.data import RlPrompt
from tidetune_trainer.rl.rewards import RewardSet


@dataclass(frozen=True)
class RLSettings:
    """What the objective needs from ``spec.rl`` (flattened)."""

    method: str = "grpo"
    loss_type: str = "grpo"
    num_generations: int = 4
    max_completion_length: int = 64
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None
    temperature: float = 1.0
    epochs_per_rollout: int | None = None
    overlong_buffer: int | None = None
    gamma: float = 1.0
    gae_lambda: float = 0.95
    value_coef: float = 0.1
    value_clip: float = 0.2
    sample_every_steps: int = 10
    seed: int = 42
    #: dapo's dynamic sampling: extra rounds per step (None: the default, 4)
    max_resample_rounds: int | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> RLSettings:
        rl = spec.rl
        return cls(
            method=str(spec.method.value),
            loss_type=str(rl.loss_type.value),
            num_generations=rl.num_generations,
            max_completion_length=rl.max_completion_length,
            beta=rl.beta,
            epsilon=rl.epsilon,
            epsilon_high=rl.epsilon_high,
            temperature=rl.temperature,
            epochs_per_rollout=rl.epochs_per_rollout,
            overlong_buffer=rl.overlong_buffer,
            gamma=rl.gamma,
            gae_lambda=rl.gae_lambda,
            value_coef=rl.value_coef,
            sample_every_steps=rl.sample_every_steps,
            seed=spec.hyperparameters.seed,
            max_resample_rounds=rl.max_resample_rounds,
        )

    @property
    def updates(self) -> int:
        if self.epochs_per_rollout is not None:
            return self.epochs_per_rollout
        return 4 if self.method == "ppo" else 1

    @property
    def clip(self) -> A.ClipSettings:
        high = self.epsilon_high
        if high is None:
            high = 0.28 if self.loss_type == "dapo" else self.epsilon
        return A.ClipSettings(self.epsilon, high, self.beta)

    @property
    def effective_loss(self) -> str:
        return "ppo" if self.method == "ppo" else self.loss_type

    @property
    def dynamic_sampling(self) -> bool:
        return self.method == "grpo" and self.loss_type == "dapo"

    @property
    def resample_rounds(self) -> int:
        """Extra sampling rounds a step may take (0 unless dapo)."""
        if not self.dynamic_sampling:
            return 0
        if self.max_resample_rounds is None:
            return DEFAULT_RESAMPLE_ROUNDS
        return self.max_resample_rounds


#: ``rl.maxResampleRounds`` when unset
DEFAULT_RESAMPLE_ROUNDS = 4


def step_generator(
    seed: int, step: int, rank: int, micro: int, device: torch.device
) -> torch.Generator:
    """The sampling RNG of one micro-batch of one step (independent of everything else)."""
    h = hashlib.sha256(f"tidetune-rollout/{seed}/{step}/{rank}/{micro}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


def _cache_argument(model: Any) -> str:
    """The forward's KV-cache keyword: ``cache`` (transformers ≥ 5.2x) or the older
    ``past_key_values``; a peft wrapper is looked through."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator,
    any_rank: Callable[[bool], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample completions for left-padded prompts ``[N, P]`` with a KV cache: one
    forward over the prompts, then one token per step for all rows at once. Returns
    (completion ids ``[N, C]`` right-padded with ``pad_id``, mask ``[N, C]``: 1 up to and
    including each row's stop token). ``C`` ≤ ``max_new_tokens`` (it ends early when
    every row has stopped — on every rank, with ``any_rank``: under ZeRO-3 each forward
    is a collective, so no rank may stop before the others)."""
    n = prompt_ids.shape[0]
    device = prompt_ids.device
    stop = torch.tensor(list(stop_ids) or [-1], device=device)
    cache_arg = _cache_argument(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    past = _cache_of(out)
    logits = out.logits[:, -1, :]
    attn = prompt_mask
    tokens: list[torch.Tensor] = []
    alive = torch.ones(n, dtype=torch.bool, device=device)
    masks: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        tokens.append(nxt)
        masks.append(alive.clone())
        alive = alive & ~torch.isin(nxt, stop)
        going = bool(alive.any())
        if any_rank is not None:  # ZeRO-3: every rank runs the same number of forwards
            going = any_rank(going)
        if not going or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(n, 1, dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=nxt.unsqueeze(1), attention_mask=attn, use_cache=True, **{cache_arg: past}
        )
        past = _cache_of(out)
        logits = out.logits[:, -1, :]
    return torch.stack(tokens, dim=1), torch.stack(masks, dim=1).to(torch.long)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@dataclass
class Samples:
    """Sample completions written to ``samples.jsonl`` every ``sampleEverySteps``."""

    lines: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Sampled:
    """One micro-batch's sampled groups (``groups × g`` rows, a group's rows adjacent):
    left-padded prompts, right-padded completions, rewards, lengths, advantages and
    ``keep`` (0 for a group without a signal under dapo)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    lengths: torch.Tensor
    keep: torch.Tensor
    advantages: torch.Tensor | None
    g: int

    @property
    def groups(self) -> int:
        return int(self.keep.shape[0]) // self.g

    @property
    def signal_groups(self) -> int:
        return int(self.keep.view(-1, self.g)[:, 0].sum())


def regroup(sampled: Sequence[Sampled], sizes: Sequence[int], pad_id: int, g: int) -> list[Sampled]:
    """The step's micro-batches (``sizes`` groups each) from every sampled group: the
    groups with a signal first, in sampling order, then (at the resampling cap) groups
    without one. Prompts are left-padded and completions right-padded again."""
    order = [(x, k) for x in sampled for k in range(x.groups) if x.keep[k * g] > 0]
    order += [(x, k) for x in sampled for k in range(x.groups) if not x.keep[k * g] > 0]
    out: list[Sampled] = []
    pos = 0
    for size in sizes:
        chosen = order[pos : pos + size]
        pos += size
        rows = [(x, k * g + i) for x, k in chosen for i in range(g)]
        prompts = [x.prompt_ids[r][x.prompt_mask[r].bool()].tolist() for x, r in rows]
        p_ids, p_mask = left_pad(prompts, pad_id)
        width = max(x.completion_ids.shape[1] for x, _ in rows)
        device = rows[0][0].completion_ids.device
        comp = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
        c_mask = torch.zeros(
            (len(rows), width), dtype=rows[0][0].completion_mask.dtype, device=device
        )
        for i, (x, r) in enumerate(rows):
            w = x.completion_ids.shape[1]
            comp[i, :w] = x.completion_ids[r]
            c_mask[i, :w] = x.completion_mask[r]
        adv = (
            None
            if rows[0][0].advantages is None
            else torch.stack([x.advantages[r] for x, r in rows])  # type: ignore[index]
        )
        out.append(
            Sampled(
                p_ids.to(device),
                p_mask.to(device),
                comp,
                c_mask,
                torch.stack([x.rewards[r] for x, r in rows]),
                torch.stack([x.lengths[r] for x, r in rows]),
                torch.stack([x.keep[r] for x, r in rows]),
                adv,
                g,
            )
        )
    return out


class RLObjective:
    """GRPO / DAPO / Dr. GRPO / PPO for the shared loop (see the module doc)."""

    def __init__(
        self,
        settings: RLSettings,
        rewards: RewardSet,
        tokenizer: Any,
        stop_ids: Sequence[int],
        *,
        reference: torch.nn.Module | None = None,
        value_head: torch.nn.Module | None = None,
    ) -> None:
        self.s = settings
        self.rewards = rewards
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop_ids = list(stop_ids)
        self.reference = reference
        self.value_head = value_head
        self.updates_per_step = settings.updates
        self.rollout_tokens = 0
        self._reward_seconds = 0.0
        self._rows: list[RlPrompt] = []
        self._stats: dict[str, list[float]] = {}
        self.samples: list[dict[str, Any]] = []
        #: called on rank 0 with sample completions every ``sampleEverySteps``
        self.sample_sink: Callable[[list[dict[str, Any]]], None] | None = None

    # ------------------------------------------------------------------ loop protocol

    def collate(self, rows: Sequence[RlPrompt]) -> dict[str, torch.Tensor]:
        ids, mask = left_pad([r.prompt_ids for r in rows], self.pad_id)
        start = len(self._rows)
        self._rows.extend(rows)
        return {
            "prompt_ids": ids,
            "prompt_mask": mask,
            "row_ids": torch.arange(start, start + len(rows), dtype=torch.long),
        }

    def row_tokens(self, row: RlPrompt) -> int:
        """Prompt tokens (each processed with every completion of its group); the
        sampled completion tokens are added after the rollout (``rollout_tokens``)."""
        return len(row) * self.s.num_generations

    def units(self, batch: dict[str, torch.Tensor]) -> float:
        if "completion_mask" not in batch:  # before the rollout
            return float(batch["prompt_ids"].shape[0] * self.s.num_generations)
        mask = batch["completion_mask"] * batch["keep"].unsqueeze(1)
        loss = self.s.effective_loss
        if loss in ("dapo", "ppo"):
            return float(mask.sum())
        return float(batch["keep"].sum())

    def _add(self, key: str, total: float, count: float) -> None:
        cur = self._stats.setdefault(key, [0.0, 0.0])
        cur[0] += total
        cur[1] += count

    def step_stats(self) -> dict[str, tuple[float, float]]:
        """(sum, count) per metric since the last call; the loop averages over ranks."""
        out = {k: (v[0], v[1]) for k, v in self._stats.items()}
        self._stats = {}
        return out

    # ------------------------------------------------------------------ rollout

    def _reference_logps(
        self, engine: Any, ids: torch.Tensor, attn: torch.Tensor, c: int
    ) -> torch.Tensor:
        if self.reference is not None:
            lp, _, _ = A.completion_logps(self.reference, ids, attn, c, self.s.temperature)
            return lp
        model = engine.unwrapped()
        ctx = (
            model.disable_adapter()
            if hasattr(model, "disable_adapter")
            else contextlib.nullcontext()
        )
        with ctx:
            lp, _, _ = A.completion_logps(model, ids, attn, c, self.s.temperature)
        return lp

    def rollout(
        self,
        engine: Any,
        batches: list[dict[str, torch.Tensor]],
        step: int,
        more: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Generate, score and prepare every micro-batch of a step (see the module doc).
        ``more`` gives the next micro-batch of prompts in the data order (dapo's dynamic
        sampling)."""
        t0 = time.monotonic()
        s = self.s
        engine.train_mode(False)
        sharded = bool(getattr(engine, "deepspeed", False)) and engine.cfg.zero_stage == 3
        sync = engine.any_rank if sharded and engine.world_size > 1 else None
        #: completion tokens sampled in this step (the loop adds them to trained tokens)
        self.rollout_tokens = 0
        self._reward_seconds = 0.0
        world = float(getattr(engine, "world_size", 1) or 1)
        try:
            sampled = [
                self._sample(engine, batch, step, j, sync) for j, batch in enumerate(batches)
            ]
            if s.dynamic_sampling:
                sizes = [int(b["row_ids"].shape[0]) for b in batches]
                target = sum(sizes)
                signal = sum(x.signal_groups for x in sampled)
                rounds = resampled = 0
                while (
                    more is not None
                    and rounds < s.resample_rounds
                    and engine.any_rank(signal < target)
                ):
                    extra = self._sample(engine, more(), step, len(batches) + rounds, sync)
                    sampled.append(extra)
                    signal += extra.signal_groups
                    resampled += extra.groups
                    rounds += 1
                dropped = sum(x.groups - x.signal_groups for x in sampled)
                if rounds:
                    sampled = regroup(sampled, sizes, self.pad_id, s.num_generations)
                unfilled = sum(x.groups - x.signal_groups for x in sampled)
                # totals over ranks: each rank adds its share with a count of 1/world
                self._add("droppedGroups", float(dropped), 1.0 / world)
                self._add("resampledGroups", float(resampled), 1.0 / world)
                self._add("unfilledGroups", float(unfilled), 1.0 / world)
                self._add("resampleRounds", float(rounds), 1.0)
            out = [self._prepare(engine, x) for x in sampled]
        finally:
            engine.train_mode(True)
            self._rows = []
        if self.samples and self.sample_sink is not None and engine.is_main:
            self.sample_sink(self.samples)
        self.samples = []
        self._add("rolloutSeconds", time.monotonic() - t0, 1.0)
        self._add("rewardSeconds", self._reward_seconds, 1.0)
        return out

    def _sample(
        self,
        engine: Any,
        batch: dict[str, torch.Tensor],
        step: int,
        j: int,
        sync: Callable[[bool], bool] | None,
    ) -> Sampled:
        """Sample one micro-batch's groups and score them (round ``j`` of the step)."""
        s, g = self.s, self.s.num_generations
        device = engine.device
        model = engine.unwrapped()
        rows = [self._rows[int(i)] for i in batch["row_ids"]]
        p_ids = batch["prompt_ids"].repeat_interleave(g, dim=0).to(device)
        p_mask = batch["prompt_mask"].repeat_interleave(g, dim=0).to(device)
        gen = step_generator(s.seed, step, engine.rank, j, device)
        with engine.forward_context():
            comp, c_mask = generate(
                model,
                p_ids,
                p_mask,
                max_new_tokens=s.max_completion_length,
                temperature=s.temperature,
                stop_ids=self.stop_ids,
                pad_id=self.pad_id,
                generator=gen,
                any_rank=sync,
            )
        texts = self.tokenizer.batch_decode(
            [c[m.bool()].tolist() for c, m in zip(comp.cpu(), c_mask.cpu(), strict=True)],
            skip_special_tokens=True,
        )
        prompts = [r.text for r in rows for _ in range(g)]
        keys = sorted({k for r in rows for k in r.columns})
        columns = {k: [r.columns.get(k) for r in rows for _ in range(g)] for k in keys}
        tr = time.monotonic()
        per_rule, totals = self.rewards.score(prompts, texts, columns)
        self._reward_seconds += time.monotonic() - tr
        rewards = torch.tensor(totals, dtype=torch.float32, device=device)
        lengths = c_mask.sum(-1)
        self.rollout_tokens += int(lengths.sum())
        if s.loss_type == "dapo" and s.method == "grpo":
            buf = s.overlong_buffer or max(1, s.max_completion_length // 4)
            rewards = rewards + A.overlong_penalty(lengths, s.max_completion_length, buf)
        n = len(totals)
        keep = torch.ones(n, device=device)
        adv: torch.Tensor | None = None
        if s.method != "ppo":
            adv, std = A.group_advantages(rewards, g, scale=s.loss_type != "dr_grpo")
            zero = (std < 1e-6).float().repeat_interleave(g)
            self._add("zeroStdFraction", float(zero.sum()), float(len(zero)))
            if s.loss_type == "dapo":
                keep = 1.0 - zero
        # metrics (sums and counts; the loop averages over ranks)
        self._add("reward", float(sum(totals)), n)
        self._add("rewardSq", float(sum(x * x for x in totals)), n)
        for i, sc in enumerate(per_rule):
            self._add(f"rewards/{i}", float(sum(sc)), n)
        self._add("completionLength", float(lengths.sum()), n)
        c = comp.shape[1]
        self._add(
            "truncatedFraction",
            float((c_mask[:, -1] > 0).sum()) if c == s.max_completion_length else 0.0,
            n,
        )
        if j == 0 and ((step + 1) % s.sample_every_steps == 0 or step == 0):
            for k in range(min(2 * g, n)):
                self.samples.append(
                    {
                        "step": step + 1,
                        "prompt": prompts[k],
                        "completion": texts[k],
                        "reward": totals[k],
                        "rewards": [sc[k] for sc in per_rule],
                    }
                )
        return Sampled(p_ids, p_mask, comp, c_mask, rewards, lengths, keep, adv, g)

    def _prepare(self, engine: Any, x: Sampled) -> dict[str, torch.Tensor]:
        """What the loss needs of a final micro-batch: the sampling policy's and the
        reference's log-probabilities, advantages (PPO: values, GAE, returns)."""
        s = self.s
        model = engine.unwrapped()
        h: torch.Tensor | None = None
        ids = torch.cat([x.prompt_ids, x.completion_ids], dim=1)
        attn = torch.cat([x.prompt_mask, x.completion_mask], dim=1)
        c = x.completion_ids.shape[1]
        new: dict[str, torch.Tensor] = {
            "input_ids": ids,
            "attention_mask": attn,
            "completion_mask": x.completion_mask.float(),
        }
        with torch.no_grad(), engine.forward_context():
            need_old = self.updates_per_step > 1 or s.method == "ppo"
            if need_old:
                old, _, h = A.completion_logps(
                    model, ids, attn, c, s.temperature, hidden=s.method == "ppo"
                )
                new["old_logps"] = old.float()
            if s.beta != 0.0 or s.method == "ppo":
                new["ref_logps"] = self._reference_logps(engine, ids, attn, c).float()
        if s.method == "ppo":
            assert self.value_head is not None and h is not None
            with torch.no_grad():
                values = self.value_head(h.to(self._value_dtype())).squeeze(-1).float()
            values = values * new["completion_mask"]
            kl = new["old_logps"] - new["ref_logps"]
            token_rewards = -s.beta * kl * new["completion_mask"]
            last = (x.lengths - 1).clamp(min=0)
            token_rewards[torch.arange(len(last)), last] += x.rewards
            adv, returns = A.gae(
                token_rewards, values, new["completion_mask"], s.gamma, s.gae_lambda
            )
            new["advantages"] = A.whiten(adv, new["completion_mask"])
            new["returns"] = returns
            new["old_values"] = values
        else:
            assert x.advantages is not None
            new["advantages"] = x.advantages
        new["keep"] = x.keep
        return {k: v.detach() for k, v in new.items()}

    def _value_dtype(self) -> torch.dtype:
        assert self.value_head is not None
        return next(self.value_head.parameters()).dtype

    # ------------------------------------------------------------------ loss

    def loss_sum(
        self, engine: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.s
        mask = batch["completion_mask"] * batch["keep"].unsqueeze(1)
        c = mask.shape[1]
        logps, ent, h = A.completion_logps(
            engine.model,
            batch["input_ids"],
            batch["attention_mask"],
            c,
            s.temperature,
            entropy=True,
            hidden=s.method == "ppo",
        )
        old = batch.get("old_logps")
        old = logps.detach() if old is None else old
        clip = s.clip
        if s.method == "ppo":
            clip = A.ClipSettings(clip.epsilon_low, clip.epsilon_high, 0.0)  # KL is in the reward
        token_loss, diag = A.clipped_token_loss(
            logps, old, batch.get("ref_logps"), batch["advantages"], clip
        )
        loss, _ = A.reduce_loss(token_loss, mask, s.effective_loss, s.max_completion_length)
        m = mask
        tokens = float(m.sum())
        if s.method == "ppo":
            assert self.value_head is not None and h is not None
            values = self.value_head(h.to(self._value_dtype())).squeeze(-1).float()
            vl = A.value_loss(values, batch["old_values"], batch["returns"], s.value_clip)
            vsum = (vl * m).sum()
            loss = loss + s.value_coef * vsum
            self._add("valueLoss", float(vsum.detach()), tokens)
        with torch.no_grad():
            self._add("clipFraction", float((diag["clipped"] * m).sum()), tokens)
            if "kl" in diag:
                self._add("kl", float((diag["kl"] * m).sum()), tokens)
            if ent is not None:
                self._add("entropy", float((ent * m).sum()), tokens)
        return loss, {}


class SampleWriter:
    """Keeps ``samples.jsonl`` in the run location: the newest ``keep`` sample lines
    (a resumed run continues the file)."""

    FILE = "samples.jsonl"

    def __init__(self, store: Any, run_key: str, keep: int = 500) -> None:
        self.store = store
        self.key = store.join(run_key, self.FILE)
        self.keep = keep
        self.lines: list[str] = []
        if store.exists(self.key):
            self.lines = [x for x in store.read_text(self.key).splitlines() if x.strip()]

    def __call__(self, samples: list[dict[str, Any]]) -> None:
        self.lines.extend(json.dumps(x, ensure_ascii=False) for x in samples)
        self.lines = self.lines[-self.keep :]
        self.store.write_text(self.key, "\n".join(self.lines) + "\n")
