"""Reward presets, answer extraction, the weighted total and the records' extra columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tidetune.api import FineTuneJob
from tidetune_trainer.data.records import read_dataset
from tidetune_trainer.rl.rewards import (
    Params,
    RewardError,
    RewardSet,
    Rule,
    build_presets,
    check_scores,
    extract,
    preset_rule,
    to_number,
)


def score(
    preset: str, comps: list[str], refs: list[Any] | None = None, **params: Any
) -> list[float]:
    fn = preset_rule(preset, Params(**params), f"spec.rl.rewards[0] ({preset})")
    cols = {"reference": refs} if refs is not None else {}
    return fn(["p"] * len(comps), comps, cols)


@pytest.mark.parametrize(
    ("text", "how", "numeric", "want"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}} done", "auto", False, "\\frac{1}{2}"),
        ("work... #### 1,234", "auto", True, "1,234"),
        ("3 apples and 4 pears: 7", "auto", True, "7"),
        ("3 apples and 4 pears: 7", "auto", False, "3 apples and 4 pears: 7"),
        ("a\nb\n\nfinal line  \n", "last-line", False, "final line"),
        ("no number here", "last-number", False, None),
        ("\\boxed{x} and \\boxed{y}", "boxed", False, "y"),
        ("no box", "boxed", False, None),
        ("x #### 42", "after-hashes", False, "42"),
        ("keep all", "none", False, "keep all"),
    ],
)
def test_extract(text: str, how: str, numeric: bool, want: str | None) -> None:
    assert extract(text, how, numeric=numeric) == want


def test_to_number() -> None:
    assert to_number("1,234") == 1234
    assert to_number("3/4") == 0.75
    assert to_number("$12.") == 12
    assert to_number("x = -2.5") == -2.5
    assert to_number("none") is None
    assert to_number(None) is None


def test_exact_and_numeric_match_against_the_reference() -> None:
    comps = ["The answer is 42.", "#### 42", "\\boxed{ forty  Two }", "41"]
    refs = ["Work: 6*7 #### 42"] * 3 + ["#### 42"]
    assert score("numeric-match", comps, refs) == [1.0, 1.0, 0.0, 0.0]
    assert score("exact-match", ["#### 42", "#### 43"], ["#### 42", "#### 42"]) == [1.0, 0.0]
    assert score("exact-match", ["\\boxed{ forty  Two }"], ["\\boxed{Forty two}"]) == [1.0]
    assert score(
        "exact-match", ["\\boxed{Forty two}"], ["\\boxed{forty two}"], case_sensitive=True
    ) == [0.0]
    assert score("numeric-match", ["#### 0.3334"], ["#### 1/3"], tolerance=1e-3) == [1.0]
    assert score("numeric-match", ["#### 0.34"], ["#### 1/3"], tolerance=1e-3) == [0.0]
    # a column other than the reference
    fn = preset_rule("exact-match", Params(column="label", extract="none"), "r")
    assert fn(["p", "p"], ["yes", "no"], {"label": ["YES", "yes"]}) == [1.0, 0.0]


def test_missing_reference_column_names_the_rule_and_the_columns() -> None:
    fn = preset_rule("exact-match", Params(column="answer"), "spec.rl.rewards[2] (exact-match)")
    with pytest.raises(
        RewardError, match=r"rewards\[2\] .*no column 'answer'.*columns: label, reference"
    ):
        fn(["p"], ["x"], {"label": ["a"], "reference": ["b"]})


def test_regex_contains_json_think_length() -> None:
    assert score("regex-match", ["answer: 12", "none"], pattern=r"answer: \d+") == [1.0, 0.0]
    assert score("regex-match", ["12 ", "12 apples"], pattern=r"\d+", full_match=True) == [1.0, 0.0]
    with pytest.raises(RewardError, match="not a valid regular expression"):
        score("regex-match", ["x"], pattern="(")
    assert score("contains-all", ["Red and BLUE", "red only"], values=("red", "blue")) == [1.0, 0.5]
    assert score("contains-any", ["Red", "green"], values=("red", "blue")) == [1.0, 0.0]
    assert score("contains-any", ["Red"], values=("red",), case_sensitive=True) == [0.0]
    schema = json.dumps(
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    )
    comps = ['{"a": 1}', 'Here:\n```json\n{"a": 2}\n```', '{"a": "x"}', "{oops", "[1, 2]"]
    assert score("json-valid", comps) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert score("json-valid", comps, schema=schema) == [1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(RewardError, match="not a valid JSON Schema"):
        score("json-valid", ["{}"], schema='{"type": 3}')
    assert score("think-format", ["<think>hmm</think> 42", "<think>hmm</think>", "42"]) == [
        1.0,
        0.0,
        0.0,
    ]
    assert score("length-target", ["x" * 10, "x" * 5, "x" * 25], target=10) == [1.0, 0.5, 0.0]
    assert score("length-target", ["a b c d", "a"], target=4, unit="words") == [1.0, 0.25]
    assert score("length-penalty", ["x" * 10, "x" * 15, "x" * 40], target=10) == [0.0, -0.5, -1.0]


def test_contains_answer() -> None:
    assert score("contains-answer", ["it is Paris.", "London"], ["#### paris", "#### paris"]) == [
        1.0,
        0.0,
    ]


def test_check_scores_rejects_garbage() -> None:
    assert check_scores("r", [1, 2.5], 2) == [1.0, 2.5]
    for bad, msg in [
        ("1", "returned str"),
        ([1.0], "returned 1 scores for 2"),
        ([1.0, float("nan")], "score 1 is nan"),
        ([1.0, "x"], "score 1 is str"),
        ([True, 1.0], "score 0 is bool"),
    ]:
        with pytest.raises(RewardError, match=msg):
            check_scores("r", bad, 2)


def test_weighted_total_and_per_rule_scores() -> None:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "tidetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "x"},
            "spec": {
                "method": "grpo",
                "baseModel": {"uri": "builtin://tiny-llama"},
                "data": {"train": {"uri": "file:///d.jsonl", "format": "prompt-completion"}},
                "rl": {
                    "rewards": [
                        {"preset": "numeric-match", "weight": 2.0},
                        {"preset": "length-penalty", "params": {"target": 4}, "weight": 0.5},
                        {"preset": "contains-any", "params": {"values": ["="]}, "weight": -1},
                    ]
                },
            },
        }
    )
    rules = [r for r in build_presets(job.spec.rl.rewards) if r is not None]
    assert [r.name for r in rules] == [
        "spec.rl.rewards[0] (numeric-match)",
        "spec.rl.rewards[1] (length-penalty)",
        "spec.rl.rewards[2] (contains-any)",
    ]
    per_rule, totals = RewardSet(rules).score(
        ["q", "q"], ["= 12", "13 is it"], {"reference": ["#### 12", "#### 12"]}
    )
    assert per_rule == [[1.0, 0.0], [0.0, -1.0], [1.0, 0.0]]
    assert totals == [2.0 * 1 + 0.5 * 0 - 1 * 1, 2.0 * 0 + 0.5 * -1 - 0]


def test_a_failing_rule_is_named() -> None:
    def broken(p: Any, c: Any, cols: Any) -> list[float]:
        raise KeyError("oops")

    with pytest.raises(RewardError, match=r"spec.rl.rewards\[0\] \(x\): KeyError"):
        RewardSet([Rule("spec.rl.rewards[0] (x)", 1.0, broken)]).score(["p"], ["c"], {})


def test_records_keep_extra_columns(tmp_path: Path) -> None:
    pc = tmp_path / "pc.jsonl"
    pc.write_text(
        json.dumps({"question": "2+2?", "answer": "#### 4", "level": 1, "tags": ["a"]}) + "\n"
    )
    from tidetune_trainer.data.records import Columns

    (rec,) = read_dataset(
        f"file://{pc}", "prompt-completion", Columns(prompt="question", completion="answer")
    )
    assert rec.extra == {"level": 1, "tags": ["a"]}  # type: ignore[union-attr]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ],
                "gold": "yo",
            }
        )
        + "\n"
    )
    (crec,) = read_dataset(f"file://{chat}", "messages")
    assert crec.extra == {"gold": "yo"}  # type: ignore[union-attr]
