"""End to end: the RL examples on the lab's real cluster.

``examples/grpo.yaml`` and ``examples/ppo.yaml`` are applied as users apply them — each a
multi-document file with the ConfigMap that holds its reward function — adapted to the
lab only where a laptop-sized cluster needs it: the namespace, the data in the lab's S3
(the arithmetic sets of ``examples/data``), a base model that can already answer (an SFT
artifact of the builtin tiny model, trained first in the lab, so that rewards are not
all zero), CPU instead of GPUs, and a few steps.

Custom rules run in the trainer pod's ``reward-runtime`` native sidecar (an init container
with ``restartPolicy: Always``) in a namespace that enforces Pod Security ``restricted``:
the tests read the pod spec the operator wrote, and a hostile rule added to the GRPO job
reports from inside the sidecar what it can see (its uid, its environment, other
processes' ``/proc/*/environ``, a ServiceAccount token).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.cluster import REPO_ROOT
from tests.lab.deploy import Stack, tiny_job

pytestmark = [pytest.mark.e2e]

EXAMPLES = REPO_ROOT / "examples"
ARITHMETIC_PC = EXAMPLES / "data" / "arithmetic-pc.jsonl"
#: the uid the operator gives the reward runtime container (the trainer runs as 1000)
REWARD_UID = 64000

#: added to the GRPO job as a third rule with weight 0: it reports from inside the reward
#: runtime what a user's function can reach, and scores nothing
PROBE = """
import glob, json, os

def probe(prompts, completions, **columns):
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TIDETUNE_S3_ENDPOINT")
    leaked = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if any(n.encode() in data for n in names):
            leaked.append(path)
    seen = {
        "uid": os.getuid(),
        "env": sorted(os.environ),
        "storageEnv": [n for n in names if n in os.environ],
        "procEnvironWithKeys": leaked,
        "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "reference": columns["reference"][0],
    }
    print("probe: " + json.dumps(seen))
    return [0.0] * len(completions)
"""


def fresh(stack: Stack, namespace: str, name: str) -> None:
    """No earlier run of the job (a lab kept up with ``TIDETUNE_LAB_DIR`` has them)."""
    stack.kubectl("-n", namespace, "delete", "ftj", name, "--ignore-not-found", "--wait=true")


def run_to_success(
    stack: Stack, namespace: str, name: str, docs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Apply the example's documents afresh; its status once it Succeeded (took printed)."""
    fresh(stack, namespace, name)
    started = time.monotonic()
    stack.apply(*docs)
    st = stack.wait_phase(namespace, name, "Succeeded", "Failed", timeout=420)
    took = time.monotonic() - started
    assert st["phase"] == "Succeeded", st.get("message")
    print(f"{name}: {took:.0f} s, status.metrics {st['metrics']}")
    return st


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def for_the_lab(
    docs: list[dict[str, Any]],
    namespace: str,
    *,
    model_uri: str,
    data_uri: str,
    steps: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An example's documents moved into ``namespace`` and sized for the lab: its model and
    data in the lab's S3, CPU only, ``steps`` small steps. Returns (documents, job)."""
    (job,) = [d for d in docs if d["kind"] == "FineTuneJob"]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    spec = job["spec"]
    spec["baseModel"]["uri"] = model_uri
    spec["data"]["train"]["uri"] = data_uri
    spec["resources"] = {"nodes": 1, "gpusPerNode": 0}
    # without CUDA, DeepSpeed (ZeRO 1-3) JIT-compiles its shared-memory op in each new
    # pod: a minute or more here, and cc1plus is OOM-killed at the lab's 2Gi limit
    spec["deepspeed"] = {"zeroStage": 0}
    spec.pop("scheduling", None)  # the lab has no night-a100 pool
    spec["output"]["uri"] = "s3://tidetune/artifacts"
    rl = spec["rl"]
    rl["maxCompletionLength"] = 12
    rl["sampleEverySteps"] = 2
    rl["temperature"] = 1.0
    hp = spec["hyperparameters"]
    hp.update(maxSteps=steps, batchSize=2, maxSeqLength=96, seed=7)
    return docs, job


@pytest.fixture(scope="module")
def warm_model(stack: Stack, train_uri: str) -> str:
    """An SFT artifact of the builtin tiny model (the quickstart's settings): it writes
    equations, so that the examples' rules score something."""
    stack.namespace("e2e-rl-warm")
    job = tiny_job("warm", "e2e-rl-warm", train_uri, steps=40, every=40)
    job["spec"].update(
        tuning={"type": "full"},
        hyperparameters={
            "maxSteps": 40,
            "batchSize": 8,
            "learningRate": 3e-3,
            "warmupSteps": 4,
            "maxSeqLength": 96,
            "packing": True,
            "seed": 42,
        },
    )
    stack.apply(job)
    st = stack.wait_phase("e2e-rl-warm", "warm", "Succeeded", "Failed", timeout=420)
    assert st["phase"] == "Succeeded", st.get("message")
    return str(next(a for a in st["artifacts"] if a["name"] == "final")["uri"])


def run_root(st: dict[str, Any]) -> str:
    """The job's folder in the lab's bucket (``artifacts/<ns>/<name>/<uid>/``)."""
    final = next(a for a in st["artifacts"] if a["name"] == "final")["uri"]
    return str(final).removeprefix("s3://tidetune/").removesuffix("final/")


def metric_lines(stack: Stack, root: str) -> list[dict[str, Any]]:
    text = stack.get(root + "run/metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def trainer_pod(stack: Stack, namespace: str, job: str) -> dict[str, Any]:
    pods = stack.pods(namespace, f"tidetune.io/job={job}")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def assert_reward_sidecar(pod: dict[str, Any], image: str) -> dict[str, Any]:
    """The pod ran users' functions in a reward-runtime native sidecar that holds no
    credential; returns that container's spec."""
    spec = pod["spec"]
    (sidecar,) = [c for c in spec.get("initContainers", []) if c["name"] == "reward-runtime"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == image
    assert "envFrom" not in sidecar
    assert all("valueFrom" not in e for e in sidecar.get("env", []))
    names = {e["name"] for e in sidecar.get("env", [])}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TIDETUNE_S3_ENDPOINT"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in sidecar["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]], mount  # the socket and its scratch only
    assert not any("secret" in v or "projected" in v for v in volumes.values()), volumes
    assert spec["automountServiceAccountToken"] is False
    sc = sidecar["securityContext"]
    assert sc["runAsUser"] == REWARD_UID and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    # the trainer reaches it through the shared socket folder, read-only on its side
    (trainer,) = spec["containers"]
    socket_env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert socket_env["TIDETUNE_REWARD_SOCKET"].startswith("/var/run/tidetune-reward/")
    (shared,) = [m for m in trainer["volumeMounts"] if m["name"] == "reward-socket"]
    assert shared["readOnly"] is True
    # a native sidecar: started before the trainer, stopped (cleanly) after it ended
    (status,) = [s for s in pod["status"]["initContainerStatuses"] if s["name"] == "reward-runtime"]
    (main,) = pod["status"]["containerStatuses"]
    side_run, main_run = status["state"]["terminated"], main["state"]["terminated"]
    assert side_run["exitCode"] == 0 and main_run["exitCode"] == 0, (status, main)
    assert side_run["startedAt"] <= main_run["startedAt"], (status, main)
    assert side_run["finishedAt"] >= main_run["finishedAt"], (status, main)
    assert status["restartCount"] == 0
    return dict(sidecar)


def trainer_log(stack: Stack, namespace: str, pod: dict[str, Any]) -> str:
    res = stack.lab.kubectl("-n", namespace, "logs", pod["metadata"]["name"], "-c", "pytorch")
    return str(res.stdout)


def test_grpo_example_runs_with_its_rules_in_the_reward_sidecar(
    stack: Stack, warm_model: str
) -> None:
    ns = "e2e-grpo"
    stack.namespace(ns)
    data_uri = stack.put("data/e2e-grpo/gsm-prompts.jsonl", ARITHMETIC_PC.read_bytes())
    docs, job = for_the_lab(
        load_example("grpo.yaml"), ns, model_uri=warm_model, data_uri=data_uri, steps=4
    )
    rl = job["spec"]["rl"]
    rl["numGenerations"] = 4
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    cm["data"]["probe.py"] = PROBE
    rl["rewards"].append(
        {
            "function": {
                "configMapRef": {"name": cm["metadata"]["name"], "key": "probe.py"},
                "entrypoint": "probe",
            },
            "weight": 0.0,
        }
    )
    name = job["metadata"]["name"]
    st = run_to_success(stack, ns, name, docs)
    metrics = st["metrics"]
    for key in ("reward", "rewardStd", "kl", "completionLength"):
        assert key in metrics, metrics
    assert st["progress"]["step"] == 4
    assert st["attempt"] == 1 and st["failures"] == 0
    labels = json.loads(stack.kubectl("get", "ns", ns, "-o", "json"))["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    root = run_root(st)
    lines = [m for m in metric_lines(stack, root) if "reward" in m]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for m in lines:
        for key in ("reward", "rewards/0", "rewards/1", "rewards/2", "kl", "clipFraction"):
            assert key in m, m
        # reward = 1.0 × exact-match + 0.5 × the example's function + 0 × the probe
        assert m["reward"] == pytest.approx(m["rewards/0"] + 0.5 * m["rewards/1"], abs=1e-6)
        assert m["rewards/2"] == 0.0
    # the warm model writes equations: the example's function ("=" and short) scores them
    assert max(m["rewards/1"] for m in lines) > 0, lines
    samples = [
        json.loads(x) for x in stack.get(root + "run/samples.jsonl").decode().splitlines() if x
    ]
    assert samples and {"completion", "reward"} <= samples[0].keys(), samples[:1]

    pod = trainer_pod(stack, ns, name)
    assert_reward_sidecar(pod, stack.values["config"]["trainerImage"])
    # the probe ran in the sidecar (its uid) and found no credential anywhere
    log = trainer_log(stack, ns, pod)
    printed = [x for x in log.splitlines() if x.startswith("probe: ")]
    assert printed, log[-3000:]
    seen = json.loads(printed[0].removeprefix("probe: "))
    assert seen["uid"] == REWARD_UID, seen
    assert seen["storageEnv"] == [] and seen["procEnvironWithKeys"] == [], seen
    assert seen["token"] is False, seen
    assert not any(k.startswith("AWS_") for k in seen["env"]), seen
    assert seen["reference"]  # the dataset's columns reach the rule
    assert stack.s3.secret_key not in log


def test_ppo_example_trains_a_value_head_with_its_runtime_image(
    stack: Stack, warm_model: str, tmp_path: Path
) -> None:
    ns = "e2e-ppo"
    stack.namespace(ns)
    # the example's columns: problem, and the solution as an expression sympy reads
    rows = [json.loads(x) for x in ARITHMETIC_PC.read_text().splitlines() if x.strip()]
    algebra = "".join(
        json.dumps({"problem": r["question"], "solution": r["answer"].split("=")[-1].strip(" .")})
        + "\n"
        for r in rows
    )
    data_uri = stack.put("data/e2e-ppo/algebra.jsonl", algebra.encode())
    docs, job = for_the_lab(
        load_example("ppo.yaml"), ns, model_uri=warm_model, data_uri=data_uri, steps=3
    )
    rl = job["spec"]["rl"]
    image = rl["rewardRuntime"]["image"]  # the lab maps it (trainer image + sympy)
    rl["epochsPerRollout"] = 2
    # the tiny warm model seldom gets a sum right: a format rule gives the value head
    # and the policy something to learn from (rewards/2)
    rl["rewards"].append({"preset": "regex-match", "params": {"pattern": "="}, "weight": 0.25})
    name = job["metadata"]["name"]
    st = run_to_success(stack, ns, name, docs)
    assert "reward" in st["metrics"] and "kl" in st["metrics"]
    assert st["attempt"] == 1 and st["failures"] == 0
    lines = [m for m in metric_lines(stack, run_root(st)) if "reward" in m]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        for key in ("reward", "rewards/0", "rewards/1", "rewards/2", "valueLoss", "kl"):
            assert key in m, m
        assert m["valueLoss"] >= 0
        assert m["reward"] == pytest.approx(
            m["rewards/0"] + 0.5 * m["rewards/1"] + 0.25 * m["rewards/2"], abs=1e-6
        )
    # the value head learns the returns of the rewarded completions
    assert max(m["rewards/2"] for m in lines) > 0, lines
    assert max(m["valueLoss"] for m in lines) > 0 and max(m["gradNorm"] for m in lines) > 0
    sidecar = assert_reward_sidecar(trainer_pod(stack, ns, name), image)
    limits = sidecar["resources"]["limits"]
    assert limits["memory"] == "2304Mi"  # memoryMiB 2048 + 256Mi for one trainer process
