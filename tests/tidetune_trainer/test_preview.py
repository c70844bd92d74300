"""``tidetune data preview``: each sample's tokens and loss weights, as the trainer
tokenizes them, with a real tokenizer (only the tokenizer is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tidetune.cli import main

from .conftest import REPO, trainer_env
from .realvocab import model_dir


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir(tmp_path_factory.mktemp("m") / "qwen3", "qwen3", template="qwen3")


def _chat(path: Path) -> Path:
    rows = [
        [("user", "Reply with yes"), ("assistant", "yes"), ("user", "again"), ("assistant", "ok")],
        [("user", "hi"), ("assistant", "hello")],
        [("user", "third"), ("assistant", "three")],
    ]
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) + "\n"
            for row in rows
        )
    )
    return path


def test_json_lists_tokens_with_their_weights(
    tmp_path: Path, qwen3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _chat(tmp_path / "chat.jsonl")
    args = ["data", "preview", str(data), "--format", "messages", "--model", f"file://{qwen3}"]
    code = main([*args, "--limit", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["origin"] for s in out["samples"]] == [f"{data}:1", f"{data}:2"]
    first = out["samples"][0]["tokens"]
    assert set(first[0]) == {"id", "text", "weight"}
    trained = "".join(t["text"] for t in first if t["weight"] > 0)
    assert "yes<|im_end|>" in trained and trained.endswith("ok<|im_end|>\n")
    assert "Reply" not in trained


def test_terminal_output_highlights_trained_spans(
    tmp_path: Path, qwen3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pc.jsonl"
    data.write_text(json.dumps({"prompt": "Answer: ", "completion": "four"}) + "\n")
    args = ["data", "preview", str(data), "--format", "prompt-completion"]
    args += ["--model", f"file://{qwen3}"]
    assert main([*args, "--color", "never"]) == 0
    plain = capsys.readouterr().out
    assert "Answer:[[ four<|endoftext|>]]" in plain and "2 trained" in plain
    assert main([*args, "--color", "always"]) == 0
    assert "\x1b[42;30m four<|endoftext|>\x1b[0m" in capsys.readouterr().out


def test_bad_data_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidetune.cli",
            "data",
            "preview",
            str(data),
            "--format",
            "messages",
        ],
        env=trainer_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "bad.jsonl:1" in proc.stderr and "Traceback" not in proc.stderr
