"""The examples' own reward functions survive what a model writes: a rule that raises fails
the job (exit 65), so an example must not raise on odd completions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

#: completions a small or early model writes; sympify evaluates text as Python, so
#: "= 1 .x" is an attribute lookup on sympy's One (AttributeError), not a syntax error
ODD = ["= 1 .x", "= x.y", "= (", "", "1/0", "31 + 17 = 48.", "\\boxed{48}", "9" * 400]


def example_functions() -> list[tuple[str, str, str, str]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        sources = {
            (d["metadata"]["name"], key): text
            for d in docs
            if d.get("kind") == "ConfigMap"
            for key, text in (d.get("data") or {}).items()
        }
        for d in docs:
            if d.get("kind") != "FineTuneJob":
                continue
            for rule in d["spec"].get("rl", {}).get("rewards", []):
                fn = rule.get("function")
                if fn:
                    ref = fn["configMapRef"]
                    source = sources[(ref["name"], ref["key"])]
                    out.append((path.name, ref["key"], source, fn.get("entrypoint", "score")))
    return out


@pytest.mark.parametrize(
    ("example", "key", "source", "entrypoint"),
    example_functions(),
    ids=[f"{e}:{k}" for e, k, _, _ in example_functions()],
)
def test_example_function_scores_odd_completions(
    example: str, key: str, source: str, entrypoint: str
) -> None:
    module: dict[str, Any] = {}
    exec(compile(source, key, "exec"), module)
    n = len(ODD)
    scores = module[entrypoint](["What is 31 + 17?"] * n, ODD, reference=["48"] * n)
    assert len(scores) == n and all(isinstance(s, float) for s in scores), scores


def test_every_rl_example_is_covered() -> None:
    assert {e for e, *_ in example_functions()} >= {"grpo.yaml", "ppo.yaml"}
