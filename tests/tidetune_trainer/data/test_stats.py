"""``tidetune data stats``: table, JSON, bad data → line-numbered error and exit 1."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tidetune_trainer.data.stats import main

from .conftest import WORDS

pytestmark = pytest.mark.trainer


def _chat_file(path: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        msgs = []
        for _ in range(rng.randint(1, 3)):
            msgs.append(
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 30)))}
            )
            msgs.append(
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 60)))}
            )
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _chat_file(tmp_path / "chat.jsonl")
    assert main([str(f), "--format", "messages", "--max-seq-length", "256"]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "60" in out
    assert "packing efficiency" in out
    assert "length p50 / p90 / p99 / max" in out


def test_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _chat_file(tmp_path / "chat.jsonl")
    assert main([f"file://{f}", "--format", "messages", "--max-seq-length", "128", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["samples"] + d["droppedNoLoss"] == 60
    assert d["records"] == 60
    assert d["maxSeqLength"] == 128
    assert (
        d["lengths"]["max"] >= d["lengths"]["p99"] >= d["lengths"]["p90"] >= d["lengths"]["p50"] > 0
    )
    assert 0.5 < d["packingEfficiency"] <= 1.0
    assert d["packedRows"] >= d["tokens"] / 128
    assert 0 < d["paddingFractionUnpacked"] < 1
    # truncation happens exactly for the samples whose length exceeds 128
    assert (d["truncated"] > 0) == (d["lengths"]["max"] > 128)


def test_text_split_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"text": " ".join(WORDS * k)}) for k in (1, 5, 9)) + "\n")
    assert main([str(f), "--format", "text", "--max-seq-length", "64", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["split"] >= 2 and d["chunksFromSplit"] > d["split"]
    assert d["samples"] >= d["chunksFromSplit"]


def test_bad_data_exit_1_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _chat_file(tmp_path / "chat.jsonl", 5)
    lines = f.read_text().splitlines()
    lines[3] = '{"messages": [{"role": "user", "content": "q"}]}'
    f.write_text("\n".join(lines) + "\n")
    assert main([str(f), "--format", "messages"]) == 1
    err = capsys.readouterr().err
    assert f"{f}:4: no assistant message" in err
    assert "Traceback" not in err


def test_missing_file_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.jsonl"), "--format", "text"]) == 1
    err = capsys.readouterr().err
    assert "nope.jsonl: no such dataset file" in err and "Traceback" not in err


def test_hub_model_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _chat_file(tmp_path / "chat.jsonl", 3)
    assert main([str(f), "--format", "messages", "--model", "hf://org/model"]) == 1
    assert "downloading from a model hub is disabled" in capsys.readouterr().err
