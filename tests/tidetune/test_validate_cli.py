"""`tidetune validate`: every bad manifest is blamed on the right field, with a clean message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tidetune.cases import BAD, EXAMPLES, GOOD, edit, example
from tidetune.cli import main


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _kind_of(name: str) -> str:
    return "IdlePool" if name == "idlepool.yaml" else "FineTuneJob"


@pytest.mark.parametrize(("case", "base", "edits", "path"), BAD, ids=[c[0] for c in BAD])
def test_bad_manifest_names_the_field(
    case: str,
    base: str,
    edits: dict[str, Any],
    path: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = _write(tmp_path, edit(example(base, _kind_of(base)), edits))
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out, "no problem printed"
    prefix = f"{file}: {path}: "
    matching = [line for line in out if line.startswith(prefix)]
    assert matching, f"expected a line starting {prefix!r}, got {out}"
    message = matching[0][len(prefix) :]
    assert len(message) > 10
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_table_is_large_enough() -> None:
    assert len(BAD) >= 30
    assert len({c[0] for c in BAD}) == len(BAD), "case ids must be unique"


@pytest.mark.parametrize(("case", "base", "edits"), GOOD, ids=[c[0] for c in GOOD])
def test_good_manifest_passes(
    case: str, base: str, edits: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = example(base, _kind_of(base))
    if "spec" in edits and isinstance(edits["spec"], dict):
        doc = {**doc, "spec": edits["spec"]}
    else:
        doc = edit(doc, edits)
    file = _write(tmp_path, doc)
    assert main(["validate", str(file)]) == 0, capsys.readouterr().out


def test_every_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    assert len(files) >= 7
    assert main(["validate", *files]) == 0, capsys.readouterr().out


def test_messages_say_what_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = edit(
        example("sft-lora.yaml"),
        {
            "spec.method": "sftt",
            "spec.tuning.lora.rank": 300,
            "spec.data.train.promptColum": "x",
            "spec.hyperparameters.learningRate": 2,
        },
    )
    file = _write(tmp_path, doc)
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out
    assert "spec.method: got 'sftt'; allowed: sft, dpo, cpt, grpo or ppo" in out
    assert "spec.tuning.lora.rank: got 300; allowed: 1–256" in out
    assert "did you mean promptColumn?" in out
    assert "learningRate: got 2; allowed: > 0 and ≤ 1" in out


def test_line_numbers_point_at_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (EXAMPLES / "sft-lora.yaml").read_text().replace("rank: 16", "rank: 0")
    file = tmp_path / "job.yaml"
    file.write_text(text)
    assert main(["validate", str(file)]) == 1
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "rank: 0" in t)
    assert f"spec.tuning.lora.rank: got 0; allowed: 1–256 (line {line})" in capsys.readouterr().out


def test_multi_document_file_reports_each_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = edit(example("sft-lora.yaml"), {"spec.hyperparameters.epochs": 0})
    pool = edit(example("idlepool.yaml", "IdlePool"), {"spec.gpus": 0})
    file = tmp_path / "all.yaml"
    file.write_text(yaml.safe_dump_all([job, pool], allow_unicode=True))
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out
    assert f"{file}: spec.hyperparameters.epochs:" in out
    assert f"{file}: spec.gpus:" in out


def test_foreign_kinds_are_skipped_but_unknown_tidetune_kinds_are_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(EXAMPLES / "grpo.yaml")]) == 0
    file = tmp_path / "x.yaml"
    file.write_text("apiVersion: tidetune.io/v1alpha1\nkind: FineTuneJobs\nmetadata: {name: a}\n")
    assert main(["validate", str(file)]) == 1
    assert f"{file}: kind: got 'FineTuneJobs'; allowed: FineTuneJob, IdlePool (line 2)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("spec: [unclosed\n", "(yaml): not valid YAML"),
        ("", "(document): no manifest found"),
        ("- just\n- a list\n", "(document): document 1 is not a mapping"),
        (b"\xff\xfe\x00bad", "(file): not UTF-8 text"),
    ],
    ids=["invalid-yaml", "empty", "not-a-mapping", "binary"],
)
def test_unreadable_input_is_a_clean_error(
    content: str | bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)
    assert main(["validate", str(file)]) == 1
    assert f"{file}: {expected}" in capsys.readouterr().out


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml"), str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nope.yaml'}: (file): no such file" in out
    assert f"{tmp_path}: (file): is a directory" in out


def test_console_script_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    bad = _write(tmp_path, edit(example("sft-lora.yaml"), {"spec.method": "x"}))
    good = EXAMPLES / "quickstart.yaml"
    exe = Path(sys.executable).with_name("tidetune")
    ok = subprocess.run([exe, "validate", str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run(
        [exe, "validate", str(good), str(bad)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 1
    assert f"{bad}: spec.method: got 'x'" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
