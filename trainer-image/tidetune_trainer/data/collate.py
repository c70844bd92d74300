"""Collation of rows into tensors, and the weighted causal-LM loss.

Packed batches and "no attention across samples"
------------------------------------------------
transformers 5.x detects packed sequences from ``position_ids`` in
``masking_utils.find_packed_sequence_indices``: where the position ids do not increase
by one, a new sequence starts, and ``create_causal_mask`` builds a block-diagonal
causal mask for ``sdpa``/``eager``/``flex`` attention (``flash_attention_2`` turns the
same position ids into ``cu_seqlens``). It does so only when ``attention_mask`` is
``None`` and no KV cache is in play. So a packed batch carries ``position_ids`` that
restart at 0 for every sample and **no** ``attention_mask``; the padding at the end of
a shorter row gets positions ``0, 1, …`` too, i.e. it is a sequence of its own that no
real token can see. The model must run with ``use_cache=False`` (the training forward
does; ``prepare_model_for_packing`` sets ``config.use_cache = False``), because with a
cache transformers skips the packed-sequence detection and would attend across samples.

We chose this over passing a 4-D block-diagonal mask because it is what every attention
implementation of transformers understands (the 4-D mask is not accepted by
``flash_attention_2`` and costs B×T×T memory to build in Python), and it is exactly
as correct: the tests compare per-token losses of packed and unpacked batches.

Unpacked batches are right-padded and carry a 2-D ``attention_mask``.

Not every architecture honours this: some build their mask (and positions) from
``attention_mask`` alone and ignore ``position_ids`` (OPT, Bloom, MPT in this transformers
version), so packed samples would attend to each other. :func:`packing_probe` finds out
at load time by running the model itself: the logits of a sample packed after another must
not depend on that other sample's content, and must equal the sample's logits alone. The
trainer turns packing off for a model that fails (see ``Session.check_packing``).

``flash_attention_2`` detects packed sequences from ``position_ids`` only when the batch
holds a single row; with more rows it attends across the whole row. For such models the
collator emits the packed rows flattened into one row (``flatten``), each row's padding a
sequence of its own, so the boundaries reach the kernel as ``cu_seqlens``. This cannot be
checked without a GPU and flash-attn; on CPU the flattened layout is checked to give the
same per-token losses as the rows.

Batches hold ``input_ids``, ``position_ids``, ``labels`` (``-100`` where the weight is
0), ``loss_weights`` (float) and, when not packed, ``attention_mask``; all ``[B, T]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .packing import PackedRow
from .tokenize import PreferenceSample

IGNORE_INDEX = -100


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple or multiple <= 1:
        return n
    return -(-n // multiple) * multiple


@dataclass
class Collator:
    """Turn rows (packed or one sample each) into a batch of tensors.

    ``packed``: emit restarting ``position_ids`` and no ``attention_mask`` (see the module
    docstring); otherwise right-pad with an ``attention_mask``. Rows are padded to the
    batch's longest row, rounded up to ``pad_to_multiple_of`` when given.
    """

    pad_token_id: int
    packed: bool = True
    pad_to_multiple_of: int | None = None
    #: packed rows as one row ``[1, B·T]`` (flash-attention, see the module docstring)
    flatten: bool = False

    def __call__(self, rows: Sequence[PackedRow]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        width = _round_up(max(len(r) for r in rows), self.pad_to_multiple_of)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros((b, width), dtype=torch.float32)
        position_ids = torch.zeros((b, width), dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r)
            ids = torch.tensor(r.input_ids, dtype=torch.long)
            w = torch.tensor(r.loss_weights, dtype=torch.float32)
            input_ids[i, :n] = ids
            weights[i, :n] = w
            labels[i, :n] = torch.where(w > 0, ids, IGNORE_INDEX)
            position_ids[i, :n] = torch.tensor(r.position_ids, dtype=torch.long)
            attention[i, :n] = 1
            if n < width:
                if self.packed:
                    # padding is a sequence of its own (see the module docstring)
                    position_ids[i, n:] = torch.arange(width - n)
                else:
                    position_ids[i, n:] = torch.arange(n, width)
        batch = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "labels": labels,
            "loss_weights": weights,
        }
        if not self.packed:
            batch["attention_mask"] = attention
        elif self.flatten:
            batch = {k: v.reshape(1, -1) for k, v in batch.items()}
        return batch


def collate_preference(
    samples: Sequence[PreferenceSample], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """DPO batch: rows ``[chosen_0 … chosen_{B-1}, rejected_0 … rejected_{B-1}]``.

    Each row is ``prompt + answer``, right-padded, with an ``attention_mask``;
    ``loss_weights``/``labels`` mark the answer tokens (sum the per-token log-probs with
    them to get each answer's log-likelihood).
    """
    rows: list[PackedRow] = []
    for which in ("chosen", "rejected"):
        for s in samples:
            ans = s.chosen_ids if which == "chosen" else s.rejected_ids
            aw = s.chosen_weights if which == "chosen" else s.rejected_weights
            ids = s.prompt_ids + ans
            rows.append(
                PackedRow(
                    ids, [0.0] * len(s.prompt_ids) + list(aw), list(range(len(ids))), [len(ids)]
                )
            )
    return Collator(pad_token_id, packed=False, pad_to_multiple_of=pad_to_multiple_of)(rows)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[B, T]`` of predicting ``labels[:, t]`` from position t-1.

    Position 0 and ignored labels get 0.
    """
    b, t, v = logits.shape
    out = torch.zeros((b, t), dtype=torch.float32, device=logits.device)
    shifted = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(b, t - 1)
    out[:, 1:] = shifted
    return out


def weighted_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor, num_items: Any = None
) -> torch.Tensor:
    """``Σ weight × token loss / number of tokens with weight > 0``.

    A weight of 2 counts its message twice; 0 masks. ``num_items`` overrides the
    denominator (e.g. the count across gradient-accumulation steps or ranks).
    """
    losses = token_losses(logits, labels)
    w = loss_weights.to(losses.dtype)
    w[:, 0] = 0.0
    denom = num_items if num_items is not None else (w > 0).sum().clamp(min=1)
    return (losses * w).sum() / denom


def prepare_model_for_packing(model: Any) -> None:
    """Make ``model`` see packed rows correctly: turn its KV cache off for training.

    Raises ``RuntimeError`` if the installed transformers cannot detect packed sequences.
    """
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as e:  # pragma: no cover - transformers < 4.53
        raise RuntimeError(
            "this transformers version cannot detect packed sequences from position_ids; "
            "set hyperparameters.packing: false or upgrade transformers"
        ) from e
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False


def packing_probe(model: Any, vocab_size: int) -> tuple[float, float]:
    """Run ``model`` on two tiny samples packed as the collator packs them and alone.

    Returns ``(leak, drift)``: ``leak`` is the largest change of the second sample's
    logits when the first sample's tokens change (nonzero: packed samples see each
    other); ``drift`` is the largest difference between the packed and the alone logits
    (positions or masking handled differently). Runs in eval mode without gradients;
    the model's mode is restored.
    """
    g = torch.Generator().manual_seed(1234)
    hi = max(4, min(vocab_size, 30_000))
    a, b, c = (torch.randint(3, hi, (n,), generator=g) for n in (7, 7, 9))
    device = next(model.parameters()).device

    def logits(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = model(
            input_ids=ids.view(1, -1).to(device),
            position_ids=pos.view(1, -1).to(device),
            use_cache=False,
        )
        result: torch.Tensor = out.logits[0].float().cpu()
        return result

    def packed(first: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([first, c])
        pos = torch.cat([torch.arange(len(first)), torch.arange(len(c))])
        return logits(ids, pos)[len(first) :]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            after_a, after_b = packed(a), packed(b)
            alone = logits(c, torch.arange(len(c)))
    finally:
        model.train(was_training)
    leak = float((after_a - after_b).abs().max())
    drift = float((after_a - alone).abs().max())
    return leak, drift


def packing_ok(leak: float, drift: float, dtype: torch.dtype) -> bool:
    """Whether probe results mean samples packed in a row do not see each other: no leak
    beyond rounding, and packed logits equal the alone ones within the dtype's noise."""
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    return leak <= 1e-6 and drift <= tolerance
