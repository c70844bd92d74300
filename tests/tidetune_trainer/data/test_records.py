"""Reading and validating datasets: every format, every bad-data case, line numbers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tidetune_trainer.data import (
    ChatRecord,
    Columns,
    DataValidationError,
    PreferenceRecord,
    PromptCompletionRecord,
    TextRecord,
    read_dataset,
)
from tidetune_trainer.data.records import DataFormat, parse_dataset

GOOD_CHAT = {
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
}
GOOD = {
    "messages": GOOD_CHAT,
    "prompt-completion": {"prompt": "2+2=", "completion": "4"},
    "text": {"text": "once upon a time"},
    "preference": {
        "messages": [
            {"role": "user", "content": "pick"},
            {
                "role": "assistant",
                "content": [{"text": "a", "score": 1}, {"text": "b", "score": 0}],
            },
        ]
    },
}


def _write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_messages_with_loss_weights(tmp_path: Path) -> None:
    rec = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "loss_weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "loss_weight": 2.5},
        ],
        "id": "extra keys are ignored",
    }
    p = _write(tmp_path, [json.dumps(rec)])
    [r] = read_dataset(str(p), "messages")
    assert isinstance(r, ChatRecord)
    assert [m.role for m in r.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m.loss_weight for m in r.messages] == [1.0, 1.0, 0.0, 1.0, 2.5]
    assert r.origin == f"{p}:1"


def test_prompt_completion_custom_columns(tmp_path: Path) -> None:
    p = _write(tmp_path, [json.dumps({"question": "Q?", "answer": "A."})])
    [r] = read_dataset(
        f"file://{p}", "prompt-completion", Columns(prompt="question", completion="answer")
    )
    assert isinstance(r, PromptCompletionRecord)
    assert (r.prompt, r.completion) == ("Q?", "A.")


def test_text_and_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    p = _write(tmp_path, ['{"text": "a"}', "", "   ", '{"text": "b"}'])
    recs = read_dataset(str(p), "text")
    assert [r.origin.rsplit(":", 1)[1] for r in recs] == ["1", "4"]
    assert all(isinstance(r, TextRecord) for r in recs)


def test_preference_best_and_worst(tmp_path: Path) -> None:
    rec = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "write"},
            {
                "role": "assistant",
                "content": [
                    {"text": "ok", "score": 0.5},
                    {"text": "best", "score": 0.9},
                    {"text": "worst", "score": -1},
                ],
            },
        ]
    }
    [r] = read_dataset(str(_write(tmp_path, [json.dumps(rec)])), "preference")
    assert isinstance(r, PreferenceRecord)
    assert (r.chosen, r.rejected) == ("best", "worst")
    assert (r.chosen_score, r.rejected_score) == (0.9, -1.0)
    assert [m.role for m in r.prompt] == ["system", "user"]


def test_json_array_file_reports_element_lines(tmp_path: Path) -> None:
    doc = '[\n  {"text": "a"},\n  {"text": ""},\n  {"text": "c"}\n]\n'
    p = tmp_path / "d.json"
    p.write_text(doc)
    recs, problems = parse_dataset(doc.encode(), str(p), "text")
    assert len(recs) == 2
    assert [str(x) for x in problems] == [f"{p}:3: column 'text' is empty"]


def test_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_CHAT).encode() + b"\n")
    assert len(read_dataset(str(p), "messages")) == 1


def test_empty_file_is_a_problem(tmp_path: Path) -> None:
    p = _write(tmp_path, [""])
    with pytest.raises(DataValidationError, match="holds no records"):
        read_dataset(str(p), "text")


def _msgs(*ms: Any) -> str:
    return json.dumps({"messages": list(ms)})


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}

# (format, bad line, expected fragment of the problem)
BAD_CASES: list[tuple[DataFormat, str, str]] = [
    ("messages", '{"messages": [', "malformed JSON"),
    ("messages", "[1, 2]", "expected a JSON object, got array"),
    ("messages", '{"conversation": []}', "missing key 'messages'"),
    ("messages", '{"messages": "hi"}', "'messages' must be a list of messages, got string"),
    ("messages", '{"messages": []}', "'messages' is empty"),
    ("messages", _msgs(U, {"role": "bot", "content": "x"}), "unknown role 'bot'"),
    ("messages", _msgs(U, {"content": "x"}), "missing 'role'"),
    ("messages", _msgs(U, {"role": "assistant"}), "messages[1] (assistant): missing 'content'"),
    (
        "messages",
        _msgs(U, {"role": "assistant", "content": 42}),
        "'content' must be a string, got number",
    ),
    (
        "messages",
        _msgs(U, {"role": "assistant", "content": "  "}),
        "messages[1] (assistant): empty content",
    ),
    ("messages", _msgs(U), "no assistant message"),
    ("messages", _msgs(U, A, U), "the last message is 'user'"),
    (
        "messages",
        _msgs(U, {"role": "system", "content": "s"}, A),
        "a system message may only come first",
    ),
    ("messages", _msgs(U, {**A, "loss_weight": -1}), "loss_weight must be a number from 0 to 100"),
    ("messages", _msgs(U, {**A, "loss_weight": "high"}), "loss_weight must be a number"),
    ("messages", _msgs(U, {**A, "loss_weight": 0}), "every assistant message has loss_weight 0"),
    ("messages", _msgs(U, "not a message"), "messages[1]: expected an object"),
    ("prompt-completion", '{"prompt": "p"}', "missing column 'completion'"),
    (
        "prompt-completion",
        '{"prompt": "p", "completion": ["x"]}',
        "column 'completion' must be a string, got array",
    ),
    ("prompt-completion", '{"prompt": "p", "completion": ""}', "column 'completion' is empty"),
    (
        "prompt-completion",
        '{"prompt": null, "completion": "c"}',
        "column 'prompt' must be a string, got null",
    ),
    ("text", '{"content": "x"}', "missing column 'text'"),
    ("text", '{"text": "   "}', "column 'text' is empty"),
    ("text", '{"text": 3}', "column 'text' must be a string, got number"),
    (
        "preference",
        _msgs(U, {"role": "assistant", "content": [{"text": "only", "score": 1}]}),
        "at least two scored candidates, got 1",
    ),
    (
        "preference",
        _msgs(
            U,
            {
                "role": "assistant",
                "content": [{"text": "a", "score": 1}, {"text": "b", "score": 1}],
            },
        ),
        "all 2 candidates have the score 1",
    ),
    (
        "preference",
        _msgs(
            U,
            {
                "role": "assistant",
                "content": [
                    {"text": "a", "score": 1},
                    {"text": "b", "score": 1},
                    {"text": "c", "score": 0},
                ],
            },
        ),
        "candidates 0, 1 tie for the highest score 1",
    ),
    (
        "preference",
        _msgs(U, {"role": "assistant", "content": [{"text": "a"}, {"text": "b", "score": 0}]}),
        "content[0]: 'score' must be a finite number, got null",
    ),
    (
        "preference",
        _msgs(
            U,
            {"role": "assistant", "content": [{"text": "", "score": 1}, {"text": "b", "score": 0}]},
        ),
        "content[0]: empty candidate text",
    ),
    (
        "preference",
        _msgs(U, A),
        "the last message must be an assistant turn whose content is a list",
    ),
    (
        "preference",
        _msgs(
            {"role": "assistant", "content": [{"text": "a", "score": 1}, {"text": "b", "score": 0}]}
        ),
        "no user message before the candidates",
    ),
]


@pytest.mark.parametrize(
    ("fmt", "bad", "fragment"), BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)]
)
def test_bad_line_is_reported_with_file_and_line(
    tmp_path: Path, fmt: DataFormat, bad: str, fragment: str
) -> None:
    good = json.dumps(GOOD[fmt])
    # the bad line is line 3 (a blank line 2 must not shift the count)
    p = _write(tmp_path, [good, "", bad, good])
    with pytest.raises(DataValidationError) as ei:
        read_dataset(str(p), fmt)
    err = ei.value
    assert err.total == 1, err.problems
    [problem] = err.problems
    assert problem.line == 3
    assert problem.source == str(p)
    assert fragment in problem.message, problem.message
    assert f"{p}:3: " in str(err)
    assert str(err).startswith("1 problem in the data")


def test_invalid_utf8_line(tmp_path: Path) -> None:
    p = tmp_path / "bin.jsonl"
    p.write_bytes(json.dumps(GOOD_CHAT).encode() + b'\n{"text": "\xff\xfe"}\n')
    _, problems = parse_dataset(p.read_bytes(), str(p), "messages")
    assert [(x.line, "not valid UTF-8" in x.message) for x in problems] == [(2, True)]


def test_message_lists_first_20_problems_and_total(tmp_path: Path) -> None:
    lines = [json.dumps({"text": ""}) if i % 2 else json.dumps({"text": "ok"}) for i in range(60)]
    p = _write(tmp_path, lines)
    with pytest.raises(DataValidationError) as ei:
        read_dataset(str(p), "text")
    msg = str(ei.value)
    assert ei.value.total == 30
    assert (
        msg.splitlines()[0]
        == "30 problems in the data (the first 20 are listed); fix these lines and run again:"
    )
    listed = [ln for ln in msg.splitlines() if ln.startswith(f"  {p}:")]
    assert len(listed) == 20
    assert listed[0] == f"  {p}:2: column 'text' is empty"
    assert listed[-1] == f"  {p}:40: column 'text' is empty"
    assert msg.splitlines()[-1] == "  ... and 10 more"


def test_every_line_is_checked_not_only_the_first_bad_one(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        ["{oops", json.dumps(GOOD_CHAT), _msgs(U), _msgs(U, {"role": "tool", "content": "x"})],
    )
    with pytest.raises(DataValidationError) as ei:
        read_dataset(str(p), "messages")
    assert [x.line for x in ei.value.problems] == [1, 3, 4]


def test_read_from_s3(tmp_path: Path) -> None:
    from tests.support.s3 import start_s3
    from tidetune.storage import S3Credentials

    with start_s3("data") as ep:
        ep.client().put_object(
            "data", "sets/a.jsonl", io.BytesIO(b'{"text": "a"}\n{"text": 5}\n'), 26
        )
        creds = S3Credentials(
            endpoint=ep.endpoint, access_key=ep.access_key, secret_key=ep.secret_key
        )
        with pytest.raises(DataValidationError) as ei:
            read_dataset("s3://data/sets/a.jsonl", "text", credentials=creds)
        assert (
            str(ei.value.problems[0])
            == "s3://data/sets/a.jsonl:2: column 'text' must be a string, got number"
        )
