"""Fixtures of the data tests: a tiny tokenizer trained on a fixed corpus."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "under",
    "pale",
    "moonlight",
    "and",
    "river",
    "tides",
    "carry",
    "old",
    "poems",
    "toward",
    "distant",
    "harbors",
]


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Deterministic sentences for training the tiny tokenizer."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from tidetune_trainer.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(corpus(), seed=0)
