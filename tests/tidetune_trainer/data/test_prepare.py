"""The job-level pipeline: from a FineTuneJob spec to packed rows and a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidetune.api import FineTuneJob
from tidetune_trainer.data import (
    DataConfigError,
    DataSettings,
    DataValidationError,
    check_method_format,
    load_data,
    prepare_data,
)
from tidetune_trainer.tiny import load_tokenizer

pytestmark = pytest.mark.trainer
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


CASES = [
    ("sft", {"uri": "file://data/arithmetic-sft.jsonl", "format": "messages"}),
    (
        "sft",
        {
            "uri": "file://data/arithmetic-pc.jsonl",
            "format": "prompt-completion",
            "promptColumn": "question",
            "responseColumn": "answer",
        },
    ),
    ("cpt", {"uri": "file://data/tides-text.jsonl", "format": "text"}),
    ("dpo", {"uri": "file://data/arithmetic-preference.jsonl", "format": "preference"}),
]


@pytest.mark.parametrize(("method", "train"), CASES, ids=[c[1]["format"] for c in CASES])
def test_example_data_through_the_spec(
    method: str, train: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES)  # relative file:// paths are relative to the manifest
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["spec"]["method"] = method
    doc["spec"]["data"]["train"] = train
    if method == "dpo":
        doc["spec"]["dpo"] = {"beta": 0.1}
    job = FineTuneJob.model_validate(doc)
    settings = DataSettings.from_spec(job.spec)
    assert settings.max_seq_length == job.spec.hyperparameters.max_seq_length == 128
    assert settings.format == train["format"]
    assert settings.validation_split_ratio == 0.05
    loaded = load_data(settings)
    n_all = loaded.records + len(loaded.validation)
    assert len(loaded.validation) == max(1, round(n_all * 0.05))
    tok = load_tokenizer("builtin://tiny-llama", texts=loaded.texts(), seed=settings.seed)
    prepared = prepare_data(loaded, tok, settings, method=method)
    r = prepared.report
    assert r.samples == loaded.records and r.tokens > 0 and r.truncated == 0
    if method == "dpo":
        assert len(prepared.train_pairs) == r.samples and r.packed_rows is None
    else:
        assert all(len(row) <= 128 for row in prepared.train_rows)
        assert r.packed_rows == len(prepared.train_rows) < r.samples
        assert sum(len(row) for row in prepared.train_rows) == r.tokens


def test_from_spec_reads_every_data_field() -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["spec"]["data"] = {
        "train": {
            "uri": "s3://d/pc.jsonl",
            "format": "prompt-completion",
            "promptColumn": "question",
            "responseColumn": "answer",
        },
        "validation": {"uri": "s3://d/val.jsonl"},
        "mixIn": {"uri": "s3://d/general.jsonl", "ratio": 0.2, "format": "messages"},
        "maxSamples": 100,
    }
    doc["spec"]["hyperparameters"].update({"maxSeqLength": 256, "packing": False, "seed": 7})
    s = DataSettings.from_spec(FineTuneJob.model_validate(doc).spec)
    assert (s.train_uri, s.format, s.columns.prompt, s.columns.completion) == (
        "s3://d/pc.jsonl",
        "prompt-completion",
        "question",
        "answer",
    )
    assert (s.validation_uri, s.validation_split_ratio) == ("s3://d/val.jsonl", None)
    assert (s.mix_in_uri, s.mix_in_ratio, s.mix_in_format) == (
        "s3://d/general.jsonl",
        0.2,
        "messages",
    )
    assert (s.max_samples, s.max_seq_length, s.packing, s.seed, s.batch_size) == (
        100,
        256,
        False,
        7,
        8,
    )


def test_mix_in_of_another_format_and_prefix_datasets(tmp_path: Path, tiny_tokenizer: Any) -> None:
    d = tmp_path / "train"
    d.mkdir()
    for i in range(3):
        (d / f"part-{i}.jsonl").write_text(
            "\n".join(json.dumps({"q": f"what is {i}+{j}", "a": f"{i + j}"}) for j in range(10))
            + "\n"
        )
    (d / "README.md").write_text("not data")
    mix = tmp_path / "mix.jsonl"
    mix.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            }
        )
        + "\n"
    )
    from tidetune_trainer.data import Columns

    s = DataSettings(
        train_uri=f"file://{d}",
        format="prompt-completion",
        columns=Columns(prompt="q", completion="a"),
        mix_in_uri=str(mix),
        mix_in_ratio=0.25,
        mix_in_format="messages",
        max_seq_length=64,
    )
    loaded = load_data(s)
    assert loaded.records == 30 and loaded.mix_in == 10 and loaded.mix_in_repeated == 9
    prepared = prepare_data(loaded, tiny_tokenizer, s, "sft")
    assert prepared.report.samples == 40 and prepared.report.mix_in_records == 10
    # bad lines in a prefix dataset name their own file
    (d / "part-1.jsonl").write_text('{"q": "x"}\n')
    with pytest.raises(DataValidationError, match=r"part-1\.jsonl:1: missing column 'a'"):
        load_data(s)


def test_method_format_checks() -> None:
    check_method_format("sft", "messages")
    check_method_format("cpt", "text")
    with pytest.raises(
        DataConfigError, match=r"method dpo needs data\.train\.format preference, got text"
    ):
        check_method_format("dpo", "text")
    with pytest.raises(DataConfigError, match="method 'grpo' has no data pipeline here"):
        check_method_format("grpo", "messages")


def test_nothing_left_is_an_error(tmp_path: Path, tiny_tokenizer: Any) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "word " * 200, "completion": "x"}) + "\n")
    s = DataSettings(train_uri=str(f), format="prompt-completion", max_seq_length=16)
    with pytest.raises(DataConfigError, match="no training samples left"):
        prepare_data(load_data(s), tiny_tokenizer, s, "sft")
