"""Validation split, mix-in and ``maxSamples``: deterministic for a seed.

Order of operations (documented in the API as ``spec.data``):

1. ``maxSamples`` keeps the first N records of the training file (-1 = all); every line
   of the file is still validated.
2. Validation: a separate file, or ``splitRatio`` of those records held out by a seeded
   shuffle (at least one record on each side when there are two or more records).
3. Mix-in: records of a second dataset are added so that they make up ``ratio`` of the
   blended training set: ``n_mix = round(ratio * n_train / (1 - ratio))``. The mix-in
   file is shuffled with the seed and taken from the front, wrapping around (repeating
   records) when it holds fewer than ``n_mix``. The blend is then shuffled with the seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import DataConfigError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SplitCounts:
    """What the split did, for the data report."""

    train: int
    validation: int
    mix_in: int
    mix_in_repeated: int
    dropped_by_max_samples: int


def limit(records: Sequence[T], max_samples: int) -> list[T]:
    """The first ``max_samples`` records (``-1`` = all)."""
    if max_samples == -1:
        return list(records)
    if max_samples < 1:
        raise DataConfigError(f"maxSamples must be -1 (all) or ≥ 1, got {max_samples}")
    return list(records[:max_samples])


def split_validation(records: Sequence[T], ratio: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``ratio`` of ``records`` for validation (seeded shuffle, order kept)."""
    if not 0 < ratio <= 0.5:
        raise DataConfigError(f"validation splitRatio must be in (0, 0.5], got {ratio}")
    n = len(records)
    if n < 2:
        raise DataConfigError(
            f"a validation split needs at least 2 records, the training data has {n}; "
            "add data or give validation.uri"
        )
    n_val = min(n - 1, max(1, round(n * ratio)))
    idx = list(range(n))
    random.Random(f"tidetune-split-{seed}").shuffle(idx)
    val_idx = set(idx[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def mix_in(
    train: Sequence[T], extra: Sequence[T], ratio: float, seed: int
) -> tuple[list[T], int, int]:
    """Blend ``extra`` into ``train`` so that it is ``ratio`` of the result.

    Returns ``(blend, n_mix, n_repeated)``.
    """
    if not 0.01 <= ratio <= 0.99:
        raise DataConfigError(f"mixIn ratio must be within 0.01–0.99, got {ratio}")
    if not extra:
        raise DataConfigError("the mix-in dataset holds no records")
    n_mix = round(ratio * len(train) / (1 - ratio))
    rng = random.Random(f"tidetune-mixin-{seed}")
    order = list(range(len(extra)))
    rng.shuffle(order)
    picked = [extra[order[i % len(order)]] for i in range(n_mix)]
    blend = list(train) + picked
    rng.shuffle(blend)
    return blend, n_mix, max(0, n_mix - len(extra))
