"""The job commands on lab jobs: ``tidetune metrics/logs/compare/copy/cancel/chat/generate/
eval/publish/report`` (and ``kubectl tidetune …``) as a user runs them, against
``NAMESPACE/NAME`` through the lab's kubeconfig, storage read with the job's Secret.

One job (``alpha``, 8 steps, LoRA merged on export) trains to Succeeded in its own
namespace; ``beta`` is its copy made with ``tidetune copy --set … --apply`` while it trains;
a longer job is followed live with ``logs -f`` and cancelled; a ServiceAccount that may only
``get`` the jobs shows the one-line errors of a user without access to the job's Secret.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.cluster import REPO_ROOT
from tests.lab.controlplane import TOOLS
from tests.lab.deploy import Stack, tiny_job, wait_for
from tests.support.browser import BADGE, LINE, dump_dom, near, screenshot_colours
from tests.support.mlflow import MlflowServer, start_mlflow

pytestmark = [pytest.mark.e2e]

NS = "e2e-cli"
CLI = [sys.executable, "-m", "tidetune"]
#: what the pods print on stdout (Python's logging default format), unlike the rank logs
#: the trainer keeps in the run location (``2026-01-05T22:00:01.000Z [rank 0] …``): a line
#: in this format came live from a pod
POD_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[rank 0\] ", re.M)
STORED_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[rank 0\] ", re.M)


def cli_env(kubeconfig: str | Path, **extra: str) -> dict[str, str]:
    """A user's environment: this checkout's CLI, the kubeconfig, no S3 keys of their own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TIDETUNE_S3_ENDPOINT")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(str(REPO_ROOT / p) for p in ("operator", "trainer-image", ".")),
        KUBECONFIG=str(kubeconfig),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PATH=os.pathsep.join(
            [str(Path(sys.executable).parent), str(TOOLS / "bin"), "/usr/bin", "/bin"]
        ),
    )
    env.update(extra)
    return env


class User:
    """Runs ``tidetune …`` as a person with a kubeconfig would."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run(*CLI, *args, input=input, timeout=timeout)

    def run(
        self, *cmd: str, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(cmd),
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture(scope="module")
def tt(stack: Stack) -> User:
    return User(cli_env(stack.lab.kubeconfig))


@pytest.fixture(scope="module")
def jobs(stack: Stack, train_uri: str, tt: User) -> dict[str, dict[str, Any]]:
    """``alpha`` trained to Succeeded and ``beta``, its copy with another learning rate
    (made with ``tidetune copy --apply`` as soon as alpha exists: they train side by side)."""
    # a lab kept up between runs (TIDETUNE_LAB_DIR) still has the last run's jobs
    stack.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=180s")
    stack.namespace(NS)
    alpha = tiny_job(
        "alpha",
        NS,
        train_uri,
        steps=8,
        every=4,
        output={"uri": "s3://tidetune/artifacts", "exportCheckpoints": 1, "mergeLora": True},
    )
    alpha["metadata"]["labels"] = {"group": "cli"}
    stack.apply(alpha)
    made = tt(
        "copy", f"{NS}/alpha", "beta", "--set", "hyperparameters.learningRate=0.01", "--apply"
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"finetunejob.tidetune.io/beta created in {NS}\n"
    out = {}
    for name in ("alpha", "beta"):
        st = stack.wait_phase(NS, name, "Succeeded", "Failed", timeout=420)
        assert st["phase"] == "Succeeded", st.get("message")
        out[name] = stack.ftj(NS, name)
    return out


def run_key(job: dict[str, Any], name: str) -> str:
    """The S3 key of a file of the job's run location."""
    root = job["status"]["outputUri"].removeprefix("s3://tidetune/")
    return f"{root.rstrip('/')}/run/{name}"


def metric_lines(stack: Stack, job: dict[str, Any]) -> list[dict[str, Any]]:
    text = stack.get(run_key(job, "metrics.jsonl")).decode()
    return [json.loads(x) for x in text.splitlines() if x.strip()]


# --------------------------------------------------------------------------- metrics


def test_metrics_chart_csv_png_and_an_unknown_metric(
    stack: Stack, jobs: dict[str, dict[str, Any]], tt: User, tmp_path: Path
) -> None:
    out = tt("metrics", f"{NS}/alpha")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{NS}/alpha  Succeeded\n")
    assert "● loss (smoothed 0.6): last" in out.stdout and "8 points" in out.stdout
    assert "○ evalLoss (smoothed 0.6)" in out.stdout
    # CSV: the raw values are those in the job's metrics.jsonl in S3, the smoothed ones
    # TensorBoard's debiased EMA
    lines = [x for x in metric_lines(stack, jobs["alpha"]) if "loss" in x]
    out = tt("metrics", f"{NS}/alpha", "--metric", "loss", "--smooth", "0.5", "--csv", "-")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["step"]) for r in rows] == [x["step"] for x in lines] == list(range(1, 9))
    assert [float(r["loss"]) for r in rows] == [x["loss"] for x in lines]
    last = 0.0
    for n, (r, x) in enumerate(zip(rows, lines, strict=True), 1):
        last = 0.5 * last + 0.5 * x["loss"]
        assert float(r["loss_smoothed"]) == pytest.approx(last / (1 - 0.5**n))
    png, lr = tmp_path / "alpha.png", tmp_path / "lr.csv"
    out = tt(
        "metrics", f"{NS}/alpha", "--png", str(png), "--csv", str(lr), "--metric", "learningRate"
    )
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert lr.read_text().splitlines()[0] == "step,learningRate,learningRate_smoothed"
    out = tt("metrics", f"{NS}/alpha", "--metric", "reward")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        "tidetune metrics: unknown metric 'reward'; this job has: loss, evalLoss, elapsed, "
        "gradNorm, learningRate, tokens, tokensPerSecond",
    )
    out = tt("metrics", f"{NS}/alpha", "--smooth", "1.5")
    assert (out.returncode, one_line(out.stderr)) == (
        2,
        "tidetune metrics: --smooth: got 1.5; allowed: 0 (none) to 0.99",
    )
    out = tt("metrics", f"{NS}/gamma")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune metrics: job {NS}/gamma: not found",
    )


# --------------------------------------------------------------------------- logs


def test_logs_of_a_finished_job_come_from_the_run_location(
    jobs: dict[str, dict[str, Any]], tt: User
) -> None:
    out = tt("logs", f"{NS}/alpha")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # the pods have ended: each line is the rank log the trainer kept in S3
    assert STORED_LINE.search(text) and not POD_LINE.search(text)
    assert "[rank 0] INFO tidetune_trainer.progress: step 8/8 loss" in text
    for entry in ("── Validated (SpecValid)", "── Launched (Launched)", "── Started"):
        assert entry in text
    # interleaved in time order with the lifecycle
    assert text.index("── Launched") < text.index("step 1/8") < text.index("step 4/8")
    assert text.index("step 4/8") < text.index("── Checkpoint (CheckpointSaved)")
    assert text.index("exit code 0") < text.index("── Exported") < text.index("── Succeeded")
    out = tt("logs", f"{NS}/alpha", "--attempt", "2")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune logs: {NS}/alpha: no logs of attempt 2; attempts with logs: 1",
    )
    out = tt("logs", f"{NS}/alpha", "--rank", "1")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune logs: {NS}/alpha: attempt 1 has no log of rank 1; ranks: 0",
    )


def test_follow_a_job_from_pending_to_cancelled_live_from_its_pod(
    stack: Stack, jobs: dict[str, dict[str, Any]], train_uri: str, tt: User, tmp_path: Path
) -> None:
    """``logs -f`` started right after ``kubectl apply`` waits for the pod, streams it
    interleaved with the lifecycle, and ends with the job; ``cancel`` stops it for good and
    keeps the record, the checkpoints and the metrics."""
    stack.apply(tiny_job("long", NS, train_uri, steps=400, every=2))
    follow_out = tmp_path / "follow.txt"
    with open(follow_out, "w") as sink:
        follower = subprocess.Popen(
            [*CLI, "logs", f"{NS}/long", "-f"],
            env=tt.env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        st = stack.wait_step(NS, "long", 3, timeout=300)
        assert st["phase"] == "Running"
        # the running attempt is read live from its pod
        live = tt("logs", f"{NS}/long")
        assert live.returncode == 0, live.stderr
        assert POD_LINE.search(live.stdout), live.stdout[-2000:]
        assert "INFO tidetune_trainer.progress: step 1/400 loss" in live.stdout
        assert live.stdout.index("── Started") < live.stdout.index("step 1/400")
        out = tt("cancel", f"{NS}/long")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{NS}/long: spec.cancelled set;")
        st = stack.wait_phase(NS, "long", "Cancelled", "Failed", "Succeeded", timeout=120)
        assert st["phase"] == "Cancelled", st.get("message")
        # the follower ends by itself once the job has ended
        _, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    text = follow_out.read_text()
    assert POD_LINE.search(text), text[-3000:]
    for what in ("── Validated (SpecValid)", "── Started", "step 1/400", "step 3/400"):
        assert what in text, what
    assert text.index("── Validated") < text.index("── Started") < text.index("step 1/400")
    assert text.index("step 3/400") < text.index("── Cancelled (Cancelled)")
    assert text.count("step 1/400 loss") == 1  # streamed once, not again from S3
    lifecycle = [line.split(" ── ")[1] for line in text.splitlines() if " ── " in line]
    assert lifecycle[-1].startswith("Cancelled (Cancelled)"), lifecycle
    assert len(lifecycle) == len(set(lifecycle))  # each entry once
    # the record and what was written are kept
    assert stack.ftj(NS, "long")["spec"]["cancelled"] is True
    assert stack.keys(run_key(stack.ftj(NS, "long"), "checkpoints/"))
    out = tt("metrics", f"{NS}/long", "--csv", "-")
    assert out.returncode == 0 and len(out.stdout.splitlines()) >= 4, out.stderr
    out = tt("cancel", f"{NS}/long")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune cancel: {NS}/long: already Cancelled; nothing to cancel",
    )
    out = tt("logs", f"{NS}/long")  # the pod is gone: from the run location
    assert out.returncode == 0 and "── Cancelled (Cancelled)" in out.stdout, out.stderr


# --------------------------------------------------------------------------- copy and compare


def test_copy_prints_a_clean_valid_manifest(
    stack: Stack, jobs: dict[str, dict[str, Any]], tt: User, tmp_path: Path
) -> None:
    source = jobs["alpha"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in source["metadata"]["annotations"]
    out = tt("copy", f"{NS}/alpha", "alpha-2", "--set", "hyperparameters.maxSteps=12")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}  # no status
    assert doc["metadata"] == {"name": "alpha-2", "namespace": NS, "labels": {"group": "cli"}}
    assert doc["spec"]["hyperparameters"]["maxSteps"] == 12
    # the spec as the server keeps it (defaults filled in), less the old job's life
    assert source["spec"]["cancelled"] is False and source["spec"]["suspend"] is False
    assert {k: v for k, v in doc["spec"].items() if k != "hyperparameters"} == {
        k: v
        for k, v in source["spec"].items()
        if k not in ("hyperparameters", "cancelled", "suspend")
    }
    # valid for tidetune and for the API server (a server-side dry run stores nothing)
    path = tmp_path / "alpha-2.yaml"
    path.write_text(out.stdout)
    assert tt("validate", "-q", str(path)).returncode == 0
    dry = stack.kubectl("apply", "--dry-run=server", "-f", str(path))
    assert "alpha-2 created (server dry run)" in dry
    # an invalid change prints nothing and applies nothing
    out = tt("copy", f"{NS}/alpha", "bad", "--set", "tuning.lora.rank=999", "--apply")
    assert out.returncode == 1 and out.stdout == ""
    assert "spec.tuning.lora.rank: got 999; allowed: 1–256" in out.stderr
    assert out.stderr.strip().endswith("the copy is not valid; nothing was applied")
    assert stack.kubectl("-n", NS, "get", "ftj", "bad", check=False) == ""


def test_compare_two_jobs_by_name_and_by_label(
    jobs: dict[str, dict[str, Any]], tt: User, tmp_path: Path
) -> None:
    out = tt("compare", f"{NS}/alpha", f"{NS}/beta")
    assert out.returncode == 0, out.stderr
    rows = {line.split("  ")[0]: line.split() for line in out.stdout.splitlines()}
    assert out.stdout.splitlines()[0].split() == [f"{NS}/alpha", f"{NS}/beta"]
    assert rows["phase"][1:] == ["Succeeded", "Succeeded"]
    assert rows["spec.hyperparameters.learningRate"][1:] == ["0.003", "0.01"]
    assert [k for k in rows if k.startswith("spec.")] == ["spec.hyperparameters.learningRate"]
    assert rows["steps"][1:] == ["8", "8"] and rows["preemptions"][1:] == ["0", "0"]
    finals = [jobs[n]["status"]["metrics"]["trainLoss"] for n in ("alpha", "beta")]
    assert rows["loss final"][2:] == [f"{v:.4g}" for v in finals]
    for row in ("duration", "GPU-hours est → actual", "cost est → actual", "evalLoss best"):
        assert row in rows, out.stdout
    png = tmp_path / "cmp.png"
    out = tt("compare", "-l", "group=cli", "-n", NS, "--png", str(png))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == [f"{NS}/alpha", f"{NS}/beta"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = tt("compare", "-l", "group=none", "-n", NS)
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune compare: no job matches -l group=none in namespace {NS}",
    )


# --------------------------------------------------------------------------- the model


def test_generate_and_chat_with_the_exported_merged_model_and_adapter(
    jobs: dict[str, dict[str, Any]], tt: User, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"messages": [{"role": "user", "content": "What is 3 times 4?"}]})
        + "\n"
        + json.dumps({"prompt": "3*4=", "completion": "12"})
        + "\n"
    )
    answers = {}
    for artifact in ("merged", "final"):  # the merged model, and base + adapter: the same
        out = tt(
            "generate",
            f"{NS}/alpha",
            "--data",
            str(prompts),
            "--artifact",
            artifact,
            "--max-new-tokens",
            "6",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [json.loads(x) for x in out.stdout.splitlines()]
        assert len(rows) == 2 and rows[1]["prompt"] == "3*4="
        answers[artifact] = [r["completion"] for r in rows]
    assert answers["merged"] == answers["final"]
    assert answers["merged"][0].strip()  # this prompt gets more than whitespace
    out = tt("chat", f"{NS}/alpha", "--max-new-tokens", "6", input="What is 3 times 4?\n\n")
    assert out.returncode == 0, out.stderr[-2000:]
    merged = jobs["alpha"]["status"]["outputUri"].rstrip("/") + "/merged/"
    assert f"chatting with {merged}" in out.stderr
    assert out.stdout.strip() == answers["merged"][0]  # the same template, greedy answer
    out = tt("chat", f"{NS}/alpha", "--artifact", "checkpoint-9", input="")
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune chat: {NS}/alpha: no artifact 'checkpoint-9' exported; exported: final, "
        "merged, checkpoint-4",
    )


def test_eval_on_held_out_data_in_s3_is_kept_with_the_job(
    stack: Stack, jobs: dict[str, dict[str, Any]], tt: User
) -> None:
    rows = [
        json.loads(line)
        for line in (REPO_ROOT / "examples/data/arithmetic-sft.jsonl").read_text().splitlines()[-3:]
    ]
    data = stack.put("data/cli-heldout.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    out = tt(
        "eval",
        f"{NS}/alpha",
        "--data",
        data,
        "--job",
        f"{NS}/alpha",
        "--json",
        "--max-new-tokens",
        "4",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["rows"] == 3 and report["artifact"] == "merged"
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert set(report["scores"]) == {"exact-match", "numeric-match", "contains-answer"}
    kept = stack.keys(run_key(jobs["alpha"], "eval/"))
    assert len(kept) == 1 and f"kept with {NS}/alpha: s3://tidetune/{kept[0]}" in out.stderr
    assert json.loads(stack.get(kept[0]))["loss"] == report["loss"]
    # compare shows it next to the job that has none
    out = tt("compare", f"{NS}/alpha", f"{NS}/beta")
    line = next(x for x in out.stdout.splitlines() if x.startswith("eval perplexity"))
    assert f"{report['perplexity']:.4g}" in line and line.rstrip().endswith("—")


# --------------------------------------------------------------------------- publish


@pytest.fixture(scope="module")
def mlflow(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server on the host, its artifacts in the lab's S3."""
    with start_mlflow(
        stack.s3, tmp_path_factory.mktemp("mlflow"), prefix="mlflow-cli", timeout=360
    ) as srv:
        yield srv


def test_publish_to_a_real_mlflow_registry(
    stack: Stack, jobs: dict[str, dict[str, Any]], tt: User, mlflow: MlflowServer
) -> None:
    import hashlib

    from mlflow import MlflowClient

    out = tt("publish", f"{NS}/alpha", "--registry", mlflow.url, "--model", "cli-alpha")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{NS}/alpha: merged registered as cli-alpha version 1 in ")
    client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    (version,) = client.search_model_versions("name='cli-alpha'")
    status = jobs["alpha"]["status"]
    merged = next(a for a in status["artifacts"] if a["name"] == "merged")
    tags = version.tags
    assert tags["tidetune.sha256"] == merged["sha256"]
    assert tags["tidetune.job"] == f"{NS}/alpha"
    assert tags["tidetune.uid"] == jobs["alpha"]["metadata"]["uid"]
    assert tags["tidetune.baseModel"] == "builtin://tiny-llama"
    assert tags["tidetune.data.train"] == "s3://tidetune/data/arithmetic-sft.jsonl"
    assert version.run_id
    run = client.get_run(version.run_id)
    assert run.data.params["hyperparameters.learningRate"] == "0.003"
    history = client.get_metric_history(version.run_id, "loss")
    lines = [x for x in metric_lines(stack, jobs["alpha"]) if "loss" in x]
    assert [(m.step, m.value) for m in history] == [(x["step"], x["loss"]) for x in lines]
    # the files went through the tracking server into the lab's S3, byte for byte
    prefix = "mlflow-cli/" + run.info.artifact_uri.split(":", 1)[1].lstrip("/") + "/model/"
    stored = stack.keys(prefix)
    root = status["outputUri"].removeprefix("s3://tidetune/")
    originals = {k[len(root) + len("merged/") :]: k for k in stack.keys(root + "merged/")}
    assert {k[len(prefix) :] for k in stored} == set(originals)
    for key in stored:
        assert stack.get(key) == stack.get(originals[key[len(prefix) :]]), key
    assert hashlib.sha256(stack.get(stored[0])).hexdigest()
    # again: the same version; a checkpoint by reference: a new one
    again = tt("publish", f"{NS}/alpha", "--registry", mlflow.url, "--model", "cli-alpha")
    assert "registered as cli-alpha version 1" in again.stdout, again.stderr
    out = tt(
        "publish",
        f"{NS}/alpha",
        "--registry",
        mlflow.url,
        "--model",
        "cli-alpha",
        "--artifact",
        "checkpoint-4",
        "--reference-only",
    )
    assert "registered as cli-alpha version 2" in out.stdout, out.stderr
    ckpt = next(a for a in status["artifacts"] if a["name"] == "checkpoint-4")
    assert client.get_model_version("cli-alpha", "2").source == ckpt["uri"].rstrip("/")
    kept = json.loads(stack.get(root + "published.json"))
    assert [(r["model"], r["version"]) for r in kept] == [("cli-alpha", "1")] * 2 + [
        ("cli-alpha", "2")
    ]
    out = tt("publish", f"{NS}/alpha", "--registry", "http://127.0.0.1:9")
    assert out.returncode == 1 and "cannot reach the registry" in one_line(out.stderr)


# --------------------------------------------------------------------------- report


def test_report_in_headless_chromium(
    jobs: dict[str, dict[str, Any]], tt: User, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    out = tt("report", f"{NS}/alpha", "-o", str(page))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == f"wrote {page}"
    dom = dump_dom(page, tmp_path / "profile")
    assert dom.h2 == [
        "Overview",
        "Estimate vs actual",
        "Curves",
        "Timeline",
        "Checkpoints",
        "Artifacts",
        "Evaluations",
    ]
    assert dom.tags["svg"] >= 4 and len(dom.polylines) == 2 * dom.tags["svg"]
    assert len((dom.polylines[0]["points"] or "").split()) == 8  # loss: one point a step
    assert dom.tags["script"] == 0 and dom.tags["img"] == 0 and dom.tags["link"] == 0
    text = " ".join(dom.text)
    for expected in (f"{NS}/alpha", "Succeeded", "TrainingComplete", "merged", "checkpoint-4"):
        assert expected in text, expected
    assert jobs["alpha"]["metadata"]["uid"] in text
    image, colours = screenshot_colours(page, tmp_path / "report.png", tmp_path / "profile")
    assert colours[(255, 255, 255)] < 0.97 * image.width * image.height
    assert near(colours, BADGE) > 200, "the green Succeeded badge is not on screen"
    assert near(colours, LINE) > 500, "no chart line was drawn"


# --------------------------------------------------------------------------- kubectl tidetune


def test_kubectl_tidetune_is_the_same_cli(
    stack: Stack, jobs: dict[str, dict[str, Any]], tt: User
) -> None:
    kubectl = str(TOOLS / "bin" / "kubectl")
    plugins = tt.run(kubectl, "plugin", "list")
    assert "kubectl-tidetune" in plugins.stdout, plugins.stdout + plugins.stderr
    helped = tt.run(kubectl, "tidetune", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: kubectl tidetune")
    via = tt.run(kubectl, "tidetune", "metrics", f"{NS}/alpha", "--metric", "loss", "--csv", "-")
    direct = tt("metrics", f"{NS}/alpha", "--metric", "loss", "--csv", "-")
    assert via.returncode == 0 and via.stdout == direct.stdout and len(via.stdout.splitlines()) == 9
    via = tt.run(kubectl, "tidetune", "compare", f"{NS}/alpha", f"{NS}/beta")
    assert via.returncode == 0 and "spec.hyperparameters.learningRate" in via.stdout
    bad = tt.run(kubectl, "tidetune", "metrics", f"{NS}/nope")
    assert (bad.returncode, one_line(bad.stderr)) == (
        1,
        f"tidetune metrics: job {NS}/nope: not found",
    )


# --------------------------------------------------------------------------- no access


@pytest.fixture(scope="module")
def viewer(
    stack: Stack, jobs: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> User:
    """A user who may only ``get`` FineTuneJobs in the namespace (no Secrets, no pods):
    a ServiceAccount's token in a kubeconfig of its own."""
    stack.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "viewer", "namespace": NS},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "ftj-get", "namespace": NS},
            "rules": [
                {"apiGroups": ["tidetune.io"], "resources": ["finetunejobs"], "verbs": ["get"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "viewer", "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ftj-get"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": NS}],
        },
    )
    # a job that may still be cancelled: created suspended, it never starts
    stack.apply(tiny_job("held", NS, "s3://tidetune/data/arithmetic-sft.jsonl", suspend=True))
    token = stack.kubectl("-n", NS, "create", "token", "viewer", "--duration", "1h").strip()
    admin = yaml.safe_load(stack.lab.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": cluster}],
        "users": [{"name": "viewer", "user": {"token": token}}],
        "contexts": [
            {"name": "lab", "context": {"cluster": "lab", "user": "viewer", "namespace": NS}}
        ],
        "current-context": "lab",
    }
    path = tmp_path_factory.mktemp("viewer") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    user = User(cli_env(path))
    # RBAC takes effect when the binding is in the authorizer's cache
    wait_for(
        lambda: user.run(str(TOOLS / "bin" / "kubectl"), "get", "ftj", "alpha").returncode == 0,
        30,
        "the viewer's RoleBinding to take effect",
    )
    return user


def test_a_user_without_access_to_the_jobs_secret_gets_one_line(
    stack: Stack, jobs: dict[str, dict[str, Any]], viewer: User, tmp_path: Path
) -> None:
    root = jobs["alpha"]["status"]["outputUri"].rstrip("/")
    no_access = (
        f"no access to Secret {NS}/s3-creds (forbidden) and no AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY of your own; ask for `get` on that Secret, or set "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to keys that may read it"
    )
    out = viewer("metrics", "alpha")  # the kubeconfig's namespace
    assert (out.returncode, one_line(out.stderr)) == (
        1,
        f"tidetune metrics: {NS}/alpha: cannot read its files at {root}/run/metrics.jsonl: "
        + no_access,
    )
    for argv in (
        ["report", "alpha", "-o", str(tmp_path / "r.html")],
        ["compare", "alpha", "beta"],
        ["chat", "alpha"],
        ["publish", "alpha", "--registry", "http://127.0.0.1:9"],
    ):
        out = viewer(*argv, input="")
        line = one_line(out.stderr)
        assert out.returncode == 1 and line.startswith(f"tidetune {argv[0]}: {NS}/alpha: ")
        assert line.endswith(no_access), line
    # logs: no pods to read either; still one line, naming both
    out = viewer("logs", "alpha")
    line = one_line(out.stderr)
    assert out.returncode == 1 and line.startswith(f"tidetune logs: {NS}/alpha: cannot read")
    assert no_access in line and "cannot list the pods" in line
    # what needs only the job works; what needs more says so
    out = viewer("copy", "alpha", "alpha-3")
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["metadata"]["name"] == "alpha-3"
    out = viewer("cancel", "held")
    assert out.returncode == 1
    assert one_line(out.stderr).startswith(
        f"tidetune cancel: cannot cancel {NS}/held: forbidden; ask for access to it "
    )
    assert stack.ftj(NS, "held")["spec"]["cancelled"] is False
    out = viewer("metrics", "default/alpha")
    assert out.returncode == 1
    assert one_line(out.stderr).startswith("tidetune metrics: job default/alpha: forbidden")
    # with S3 keys of one's own, the same user reads the files
    own = User(
        {
            **viewer.env,
            "AWS_ACCESS_KEY_ID": stack.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": stack.s3.secret_key,
            "TIDETUNE_S3_ENDPOINT": stack.s3.endpoint,
        }
    )
    out = own("metrics", "alpha", "--csv", "-")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 9, out.stderr
