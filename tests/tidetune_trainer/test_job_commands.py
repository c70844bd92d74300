"""The job commands on local runs: two real ``tidetune run``s (the second made with
``tidetune copy --apply``), then metrics, logs, compare, report, chat, generate, eval and
cancel read what they left, through the CLI as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import BASE_JOB, merge, trainer_env, write_chat

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

CLI = [sys.executable, "-m", "tidetune"]


def tt(
    *args: str, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=trainer_env(),
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workdir with two finished runs: alpha (LoRA, merged export) and beta (its copy
    with another learning rate)."""
    root = tmp_path_factory.mktemp("jobs")
    data = write_chat(root / "chat.jsonl", n=48)
    body = merge(
        BASE_JOB,
        {
            "metadata": {
                "name": "alpha",
                "namespace": "demo",
                "uid": None,
                "labels": {"group": "demo"},
            },
            "spec": {
                "hyperparameters": {"maxSteps": 8, "seed": 3},
                "output": {"mergeLora": True, "exportCheckpoints": 1},
                "data": {"train": {"uri": f"file://{data}"}},
            },
        },
    )
    (root / "alpha.yaml").write_text(yaml.safe_dump(body))
    work = root / "wd"
    first = tt("run", str(root / "alpha.yaml"), "--workdir", str(work))
    assert first.returncode == 0, first.stderr[-3000:]
    second = tt(
        "copy",
        "demo/alpha",
        "beta",
        "--workdir",
        str(work),
        "--set",
        "hyperparameters.learningRate=0.02",
        "--apply",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    yield work


def test_metrics_terminal_csv_and_png(wd: Path) -> None:
    out = tt("metrics", "demo/alpha", "--workdir", str(wd))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("demo/alpha  Succeeded")
    assert "● loss (smoothed 0.6): last" in out.stdout and "8 points" in out.stdout
    # CSV: the raw values are exactly metrics.jsonl's, the smoothed ones TensorBoard's
    run = next((wd / "store/runs/demo/alpha").iterdir())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    out = tt(
        "metrics",
        "demo/alpha",
        "--workdir",
        str(wd),
        "--metric",
        "loss",
        "--smooth",
        "0.5",
        "--csv",
        "-",
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["step"]) for r in rows] == [x["step"] for x in lines]
    assert [float(r["loss"]) for r in rows] == [x["loss"] for x in lines]
    last = 0.0
    for n, (r, x) in enumerate(zip(rows, lines, strict=True), 1):
        last = 0.5 * last + 0.5 * x["loss"]
        assert float(r["loss_smoothed"]) == pytest.approx(last / (1 - 0.5**n))
    png = wd.parent / "alpha.png"
    out = tt("metrics", "demo/alpha", "--workdir", str(wd), "--png", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_unknown_metric_job_and_usage_are_one_line_errors(wd: Path) -> None:
    out = tt("metrics", "demo/alpha", "--workdir", str(wd), "--metric", "reward")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "tidetune metrics: unknown metric 'reward'; this job has: loss, evalLoss, elapsed, "
        "gradNorm, learningRate, tokens, tokensPerSecond"
    ]
    out = tt("logs", "demo/gamma", "--workdir", str(wd))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"tidetune logs: job demo/gamma not found in {wd}; runs there: demo/alpha, demo/beta"
    )
    out = tt("metrics", "demo/alpha", "--workdir", str(wd), "--smooth", "1.5")
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "tidetune metrics: --smooth: got 1.5; allowed: 0 (none) to 0.99",
    )
    assert tt("metrics", "Bad_Name", "--workdir", str(wd)).returncode == 2
    assert tt("compare", "--bogus").returncode == 2
    assert "Traceback" not in out.stderr
    # every command's --help and its examples: tests/tidetune/jobs/test_errors.py


def test_logs_come_from_the_run_location_with_the_timeline(wd: Path) -> None:
    out = tt("logs", "demo/alpha", "--workdir", str(wd))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "[rank 0] INFO tidetune_trainer.progress: step 8/8 loss" in text
    assert "── Started (TrainerStarted)" in text and "── Succeeded (TrainingComplete)" in text
    # interleaved in time order: the checkpoint entry comes after step 4's line
    assert text.index("step 4/8") < text.index("── Checkpoint (CheckpointSaved): step 4")
    assert text.index("── Checkpoint") < text.index("── Succeeded")
    assert "exit code 0" in text
    out = tt("logs", "demo/alpha", "--workdir", str(wd), "--attempt", "2")
    assert (out.returncode, out.stderr.strip()) == (
        1,
        "tidetune logs: demo/alpha: no logs of attempt 2; attempts with logs: 1",
    )
    out = tt("logs", "demo/alpha", "--workdir", str(wd), "--rank", "1")
    assert "attempt 1 has no log of rank 1; ranks: 0" in out.stderr


def test_compare_shows_the_changed_field_and_selects_by_label(wd: Path) -> None:
    out = tt("compare", "demo/alpha", "demo/beta", "--workdir", str(wd))
    assert out.returncode == 0, out.stderr
    rows = {line.split("  ")[0]: line for line in out.stdout.splitlines()}
    assert rows["spec.hyperparameters.learningRate"].split()[1:] == ["0.002", "0.02"]
    for row in (
        "phase",
        "duration",
        "GPU-hours est → actual",
        "loss final",
        "loss best",
        "evalLoss final",
        "preemptions",
    ):
        assert row in rows, out.stdout
    assert not any(k.startswith("spec.data") for k in rows)  # same data: not a difference
    # the copy kept alpha's labels: -l finds both
    png = wd.parent / "cmp.png"
    out = tt("compare", "-l", "group=demo", "--workdir", str(wd), "--png", str(png))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["demo/alpha", "demo/beta"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = tt("compare", "-l", "group=none", "--workdir", str(wd))
    assert out.returncode == 1 and "no job matches -l group=none" in out.stderr


def test_copy_validates_before_printing(wd: Path) -> None:
    out = tt("copy", "demo/alpha", "x", "--workdir", str(wd), "--set", "tuning.lora.rank=999")
    assert out.returncode == 1 and out.stdout == ""
    assert "spec.tuning.lora.rank: got 999; allowed: 1–256" in out.stderr
    out = tt("copy", "demo/alpha", "team-b/x", "--workdir", str(wd))
    doc = yaml.safe_load(out.stdout)
    assert doc["metadata"] == {"name": "x", "namespace": "team-b", "labels": {"group": "demo"}}
    assert "status" not in doc and "uid" not in doc["metadata"]


def test_report_is_one_self_contained_page(wd: Path) -> None:
    page = wd.parent / "alpha.html"
    out = tt("report", "demo/alpha", "--workdir", str(wd), "-o", str(page))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    for section in ("Overview", "Estimate vs actual", "Curves", "Timeline", "Artifacts"):
        assert f"<h2>{section}</h2>" in html
    assert "<svg" in html and "<script" not in html and "src=" not in html and "href=" not in html
    assert "merged" in html and "TrainingComplete" in html


def test_generate_and_chat_with_the_merged_model_and_the_adapter(wd: Path) -> None:
    prompts = wd.parent / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"messages": [{"role": "user", "content": "the sea"}]})
        + "\n"
        + json.dumps({"prompt": "wave", "completion": "x"})
        + "\n"
    )
    outs = {}
    for artifact in ("merged", "final"):  # merged model, base + adapter: the same answers
        out = tt(
            "generate",
            "demo/alpha",
            "--workdir",
            str(wd),
            "--data",
            str(prompts),
            "--artifact",
            artifact,
            "--max-new-tokens",
            "6",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [json.loads(x) for x in out.stdout.splitlines()]
        assert len(rows) == 2 and all(isinstance(r["completion"], str) for r in rows)
        assert rows[1]["prompt"] == "wave"
        outs[artifact] = [r["completion"] for r in rows]
    assert outs["merged"] == outs["final"]
    out = tt(
        "chat", "demo/alpha", "--workdir", str(wd), "--max-new-tokens", "6", input="the sea\n\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == outs["merged"][0]  # the same template and greedy answer
    out = tt("chat", "demo/alpha", "--workdir", str(wd), "--artifact", "checkpoint-9")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "tidetune chat: demo/alpha: no artifact 'checkpoint-9' exported; exported: final, "
        "merged, checkpoint-4"
    )


def test_eval_loss_matches_transformers_and_the_report_is_kept(wd: Path) -> None:
    data = wd.parent / "heldout.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "the moon"},
                {"role": "assistant", "content": "calm blue sea"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a storm"},
                {"role": "assistant", "content": "deep night"},
            ]
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tt(
        "eval",
        "demo/alpha",
        "--workdir",
        str(wd),
        "--data",
        str(data),
        "--job",
        "demo/alpha",
        "--json",
        "--max-new-tokens",
        "4",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["rows"] == 2 and report["artifact"] == "merged"
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert set(report["scores"]) == {"exact-match", "numeric-match", "contains-answer"}
    # the same loss, computed independently: transformers' own masked mean cross-entropy
    # over the assistant tokens of the same rendering
    script = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from tidetune_trainer.data.chat import render_chat
from tidetune_trainer.data.records import Message
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d)
total = count = 0
for row in map(json.loads, open({str(data)!r})):
    msgs = [Message(m["role"], m["content"]) for m in row["messages"]]
    text, spans = render_chat(msgs, tok)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]]); labels = ids.clone()
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        # a token is trained on when its first character lies in a weighted span
        if not any(s0 <= a < s1 and b > a and w > 0 for s0, s1, w in spans):
            labels[0, i] = -100
    n = int((labels[0, 1:] != -100).sum())
    total += float(model(input_ids=ids, labels=labels).loss) * n; count += n
print(total / count)
"""
    manifest = json.loads(
        next((wd / "store/artifacts/demo/alpha").iterdir()).joinpath("manifest.json").read_text()
    )
    merged = next(a for a in manifest["artifacts"] if a["name"] == "merged")["uri"]
    ref = subprocess.run(
        [sys.executable, "-c", script, merged.removeprefix("file://")],
        env=trainer_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert report["loss"] == pytest.approx(float(ref.stdout), rel=1e-4)
    # kept with the job: compare shows it
    out = tt("compare", "demo/alpha", "demo/beta", "--workdir", str(wd))
    line = next(x for x in out.stdout.splitlines() if x.startswith("eval perplexity"))
    assert f"{report['perplexity']:.4g}" in line and line.rstrip().endswith("—")


def test_cancel_a_running_local_run_and_it_stays_cancelled(wd: Path, tmp_path: Path) -> None:
    body = yaml.safe_load((wd.parent / "alpha.yaml").read_text())
    body["metadata"]["name"] = "long"
    body["spec"]["hyperparameters"].update(maxSteps=400, batchSize=2)
    body["spec"]["checkpointing"] = {"everySteps": 1000, "keep": 1}
    body["spec"]["output"] = {"exportCheckpoints": 0}
    job = tmp_path / "long.yaml"
    job.write_text(yaml.safe_dump(body))
    work = tmp_path / "wd"
    proc = subprocess.Popen(
        [*CLI, "run", str(job), "--workdir", str(work)],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            st = tt("metrics", "demo/long", "--workdir", str(work), "--csv", "-")
            if st.returncode == 0 and len(st.stdout.splitlines()) > 3:
                break
        out = tt("cancel", "demo/long", "--workdir", str(work))
        assert out.returncode == 0, out.stderr
        assert "cancelling: tidetune run (pid" in out.stdout
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == 1, err[-2000:]
    assert "Cancelled" in err
    out = tt("compare", "demo/long", "demo/alpha", "--workdir", str(work))  # alpha is not there
    assert out.returncode == 1
    show = tt("report", "demo/long", "--workdir", str(work), "-o", str(tmp_path / "r.html"))
    assert show.returncode == 0
    assert 'class="phase Cancelled"' in (tmp_path / "r.html").read_text()
    # the checkpoint written on the way out is kept, and running it again is refused
    assert list((work / "store/runs/demo/long").glob("*/checkpoints/step-*"))
    again = tt("run", str(job), "--workdir", str(work))
    assert again.returncode == 1 and "was cancelled; copy it under a new name" in again.stderr
    assert tt("cancel", "demo/long", "--workdir", str(work)).stderr.strip() == (
        "tidetune cancel: demo/long: already Cancelled; nothing to cancel"
    )


def test_kubectl_plugin_entry_point() -> None:
    exe = shutil.which("kubectl-tidetune", path=str(Path(sys.executable).parent))
    if exe is None:  # an editable install made before the entry point existed
        code = "import sys; from tidetune.cli import kubectl_plugin; sys.exit(kubectl_plugin())"
        cmd = [sys.executable, "-c", code, "--help"]
    else:
        cmd = [exe, "--help"]
    out = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("usage: kubectl tidetune")
