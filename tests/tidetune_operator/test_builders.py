"""Pure builders: the PyTorchJob, ConfigMap and Event a FineTuneJob owns."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.tidetune_operator.conftest import make_job, make_pool
from tidetune.api import FineTuneJob
from tidetune_operator import builders
from tidetune_operator.config import OPERATOR_TRAINER_ENV, OperatorConfig
from tidetune_operator.launchers import LauncherPhase, PyTorchJobLauncher, TrainJobLauncher
from tidetune_operator.launchers.trainjob import NODE, RUNTIME, pod_patch_of, runtime_manifest


def test_pytorchjob_has_master_workers_and_trainer(config: OperatorConfig) -> None:
    job = make_job("sft-full.yaml")  # 2 nodes × 8 GPUs, h100
    pj = PyTorchJobLauncher().build(job, config, None, 1, False)
    assert pj["apiVersion"] == "kubeflow.org/v1" and pj["kind"] == "PyTorchJob"
    replicas = pj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == 1
    assert pj["spec"]["nprocPerNode"] == "8"
    # no backoffLimit: with one, the training operator deletes the failed pods (and what
    # they say of the failure) at the first failed replica; cleanPodPolicy Running keeps them
    assert pj["spec"]["runPolicy"] == {"suspend": False, "cleanPodPolicy": "Running"}
    pod = replicas["Master"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"
    assert container["image"] == "registry.example.com/tidetune/trainer:1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"]["memory"] == "512Gi"
    cmd = container["command"]
    assert cmd[:5] == ["python", "-m", "tidetune_trainer.launch", "-m", "tidetune_trainer"]
    assert cmd[cmd.index("--output-uri") + 1] == "s3://artifacts/team-b/"
    run = cmd[cmd.index("--run-uri") + 1]
    assert run == f"s3://artifacts/team-b/team-b/support-bot-full/{job.metadata.uid}/run"
    # the spec comes from the owned ConfigMap, mounted read-only
    spec_volume = next(v for v in pod["volumes"] if v["name"] == "spec")
    assert spec_volume["configMap"]["name"] == builders.config_map_name(job)
    assert pod["terminationGracePeriodSeconds"] == config.termination_grace_seconds


def test_credentials_only_as_secret_refs(config: OperatorConfig) -> None:
    job = make_job()
    pj = PyTorchJobLauncher().build(job, config, None, 1, False)
    env = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    for var, key in (("AWS_ACCESS_KEY_ID", "accessKey"), ("AWS_SECRET_ACCESS_KEY", "secretKey")):
        assert "value" not in by_name[var]
        assert by_name[var]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": key}
    assert by_name["TIDETUNE_S3_ENDPOINT"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_registry_credentials_only_as_optional_secret_refs(config: OperatorConfig) -> None:
    plain = PyTorchJobLauncher().build(make_job(), config, None, 1, False)
    env = plain["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("MLFLOW_") for e in env)
    job = make_job(
        edits={
            "spec.output.publish": {
                "registry": "https://mlflow.example.com",
                "credentialsSecretRef": {"name": "mlflow-auth"},
            }
        }
    )
    pj = PyTorchJobLauncher().build(job, config, None, 1, False)
    env = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    for var, key in (
        ("MLFLOW_TRACKING_TOKEN", "token"),
        ("MLFLOW_TRACKING_USERNAME", "username"),
        ("MLFLOW_TRACKING_PASSWORD", "password"),
    ):
        assert by_name[var] == {
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": "mlflow-auth", "key": key, "optional": True}},
        }


def test_restricted_security_context(config: OperatorConfig) -> None:
    pj = PyTorchJobLauncher().build(make_job(), config, None, 1, False)
    pod = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


def test_pool_placement_and_kueue_label(config: OperatorConfig) -> None:
    job = make_job(edits={"spec.scheduling.queueName": "team-a"})
    pool = make_pool()
    pj = PyTorchJobLauncher().build(job, config, pool, 2, True)
    pod = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.example.com/pool": "online-a100"}
    assert pod["tolerations"] == [
        {"key": "online-serving", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "tidetune-preemptible"
    labels = pj["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["tidetune.io/job"] == job.metadata.name
    assert labels[builders.ATTEMPT_LABEL] == "2"
    assert pj["spec"]["runPolicy"]["suspend"] is True
    assert "Worker" not in pj["spec"]["pytorchReplicaSpecs"]


@pytest.mark.parametrize(
    "launcher", [PyTorchJobLauncher(), TrainJobLauncher()], ids=["PyTorchJob", "TrainJob"]
)
def test_kueue_workload_priority_class_is_a_label_of_the_launched_job(
    config: OperatorConfig, launcher: PyTorchJobLauncher | TrainJobLauncher
) -> None:
    """Kueue takes a Workload's priority from its job's kueue.x-k8s.io/priority-class label
    (the WorkloadPriorityClass), not from the pods' priorityClassName when the label is set."""
    job = make_job(
        edits={
            "spec.scheduling.pool": None,
            "spec.scheduling.queueName": "team-a",
            "spec.scheduling.workloadPriorityClass": "prod.high",
        }
    )
    labels = launcher.build(job, config, None, 1, True)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert labels["kueue.x-k8s.io/priority-class"] == "prod.high"
    plain = make_job(edits={"spec.scheduling.pool": None, "spec.scheduling.queueName": "team-a"})
    plain_labels = launcher.build(plain, config, None, 1, True)["metadata"]["labels"]
    assert "kueue.x-k8s.io/priority-class" not in plain_labels


def test_owner_reference_and_names_are_deterministic(config: OperatorConfig) -> None:
    job = make_job(edits={"metadata.name": "a" * 63})
    one = PyTorchJobLauncher().build(job, config, None, 1, False)
    two = PyTorchJobLauncher().build(job, config, None, 1, False)
    assert one == two
    name = one["metadata"]["name"]
    assert len(name) <= builders.MAX_LAUNCHER_NAME and name.endswith("-1")
    assert builders.launcher_name(job, 2) != name
    (ref,) = one["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_config_map_carries_the_spec_without_status(config: OperatorConfig) -> None:
    job = make_job(status={"phase": "Running"})
    cm = builders.build_config_map(job)
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert "status" not in doc
    again = FineTuneJob.model_validate(doc)
    assert again.spec == job.spec
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid


def test_cpu_job_defaults(config: OperatorConfig) -> None:
    job = make_job("quickstart.yaml")
    pj = PyTorchJobLauncher().build(job, config, None, 1, False)
    container = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert pj["spec"]["nprocPerNode"] == "1"


def test_event_is_bounded(config: OperatorConfig) -> None:
    from datetime import UTC, datetime

    job = make_job()
    event = builders.build_event(
        job.metadata,
        "BadData",
        "x" * 5000,
        warning=True,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        uid_hint="h",
    )
    assert len(event["message"]) == 1024 and event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == job.metadata.uid


def test_a_pytorchjob_runs_once_every_pod_runs(config: OperatorConfig) -> None:
    """The training operator says Running once the master's pod runs; with a worker still
    Pending (its node's GPUs taken) the job is held at rendezvous: not running yet."""
    pj = PyTorchJobLauncher()
    body = pj.build(make_job("sft-full.yaml"), config, None, 1, False)  # Master + 1 Worker
    running = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]

    def with_replicas(**active: int) -> dict[str, Any]:
        statuses = {rtype: {"active": n} for rtype, n in active.items()}
        return {**body, "status": {"conditions": running, "replicaStatuses": statuses}}

    assert pj.observe(with_replicas(Master=1, Worker=0)).phase is LauncherPhase.PENDING
    assert pj.observe(with_replicas(Master=1)).phase is LauncherPhase.PENDING
    assert pj.observe(with_replicas(Master=1, Worker=1)).phase is LauncherPhase.RUNNING
    # ended pods are not waited for (a worker done first, a failed one the failure path reads)
    done = with_replicas(Master=1)
    done["status"]["replicaStatuses"]["Worker"] = {"succeeded": 1}
    assert pj.observe(done).phase is LauncherPhase.RUNNING
    # no replicaStatuses reported: the conditions alone
    assert pj.observe({**body, "status": {"conditions": running}}).phase is LauncherPhase.RUNNING


def test_launchers_observe_conditions() -> None:
    pj = PyTorchJobLauncher()

    def with_conditions(*types: str) -> dict[str, object]:
        return {"status": {"conditions": [{"type": t, "status": "True"} for t in types]}}

    assert pj.observe({}).phase is LauncherPhase.PENDING
    assert pj.observe(with_conditions("Created", "Running")).phase is LauncherPhase.RUNNING
    assert pj.observe(with_conditions("Created", "Restarting")).phase is LauncherPhase.RESTARTING
    assert pj.observe(with_conditions("Created", "Suspended")).phase is LauncherPhase.SUSPENDED
    assert pj.observe(with_conditions("Running", "Failed")).phase is LauncherPhase.FAILED
    assert pj.observe(with_conditions("Running", "Succeeded")).phase is LauncherPhase.SUCCEEDED
    assert pj.suspend_patch(True) == {"spec": {"runPolicy": {"suspend": True}}}
    assert not pj.has_started({}) and pj.has_started(with_conditions("Created"))
    tj = TrainJobLauncher()
    assert tj.observe(with_conditions("Complete")).phase is LauncherPhase.SUCCEEDED
    # Trainer writes no condition while a TrainJob runs: its Jobs' status says it started
    running = {"status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 1}]}}
    assert tj.has_started(running) and not tj.has_started({"status": {}})
    assert tj.observe(running).phase is LauncherPhase.RUNNING
    # a child Job is active while its pods are Pending (unschedulable, pulling): not running
    pending = {"status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 0}]}}
    assert tj.has_started(pending) and tj.observe(pending).phase is LauncherPhase.PENDING
    # a Trainer that does not report ready: active it is
    older = {"status": {"jobsStatus": [{"name": "node", "active": 1}]}}
    assert tj.observe(older).phase is LauncherPhase.RUNNING
    assert tj.suspend_patch(False) == {"spec": {"suspend": False}}


def _merged_trainjob_pod(tj: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The pod Trainer makes of a TrainJob: the runtime's pod, the patch over it, the
    ``spec.trainer`` fields in the ``node`` container (as Trainer 2.3 merges them)."""
    runtime = runtime_manifest(config)["spec"]["template"]["spec"]["replicatedJobs"][0]
    pod = copy.deepcopy(runtime["template"]["spec"]["template"]["spec"])
    patch = pod_patch_of(tj)
    for key, value in patch["spec"].items():
        if key not in ("containers", "initContainers"):
            pod[key] = value
    (node,) = pod["containers"]
    (node_patch,) = patch["spec"]["containers"]
    node.update({k: v for k, v in node_patch.items() if k != "name"})
    trainer = tj["spec"]["trainer"]
    node.update(
        image=trainer["image"],
        command=trainer["command"],
        env=trainer["env"],
        resources=trainer["resourcesPerNode"],
    )
    return {"metadata": patch["metadata"], "spec": pod}


def test_a_trainjob_and_its_runtime_carry_the_whole_pod_template(config: OperatorConfig) -> None:
    """The pod template is written once (builders.pod_template): what the TrainJob patches
    and its ClusterTrainingRuntime hold together is that template, field for field."""
    pool = make_pool({"spec.priorityClassName": None})
    for job in (make_job("sft-full.yaml"), _everything_job()):
        tj = TrainJobLauncher().build(job, config, pool, attempt=2, suspend=False)
        root = builders.job_root_uri(job, config)
        assert root is not None
        expected = builders.pod_template(job, config, pool, root, 2)
        expected["spec"]["containers"][0]["name"] = NODE
        if builders.has_custom_rewards(job):
            # the sidecar is the reward runtime's (an admin's); the patch sets its
            # environment, mounts and security context
            (sidecar,) = expected["spec"].pop("initContainers")
            assert expected["spec"].pop("shareProcessNamespace") is False
            assert pod_patch_of(tj)["spec"]["initContainers"] == [
                {k: sidecar[k] for k in ("name", "env", "volumeMounts", "securityContext")}
            ]
            assert tj["spec"]["runtimeRef"]["name"] == TrainJobLauncher.reward_runtime
        else:
            assert tj["spec"]["runtimeRef"]["name"] == RUNTIME
        assert _merged_trainjob_pod(tj, config) == expected
        assert tj["spec"]["trainer"]["numNodes"] == job.spec.resources.nodes
        assert tj["spec"]["trainer"]["numProcPerNode"] == job.spec.resources.gpus_per_node
    # the values of the operator's config reach the runtime, not only the patch
    runtime = runtime_manifest(config.model_copy(update={"termination_grace_seconds": 777}))
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert pod["template"]["spec"]["terminationGracePeriodSeconds"] == 777
    assert pod["backoffLimit"] == 0 and pod["template"]["spec"]["restartPolicy"] == "Never"
    assert pod["podReplacementPolicy"] == "Failed"


def test_a_pool_priority_class_is_refused_not_dropped_by_the_trainjob_launcher(
    config: OperatorConfig,
) -> None:
    """A TrainJob has no place for priorityClassName: the job is not launched with a
    message saying so (the pool's preemptible class would silently be lost)."""
    pool = make_pool()
    assert pool.spec.priority_class_name == "tidetune-preemptible"
    job = make_job("sft-full.yaml")
    problem = TrainJobLauncher().problem(job, pool)
    assert problem is not None and "priorityClassName tidetune-preemptible" in problem
    with pytest.raises(ValueError, match="priorityClassName"):
        TrainJobLauncher().build(job, config, pool, attempt=1, suspend=False)
    pj = PyTorchJobLauncher().build(job, config, pool, attempt=1, suspend=False)
    assert _pod(pj)["priorityClassName"] == "tidetune-preemptible"


@pytest.mark.parametrize(
    "name",
    ["1st-run", "0", "9" * 63, "42-poems-v2", "a", "a" * 63, "x-1", "q" + "-9" * 31],
)
def test_launcher_names_are_dns_1035_labels(name: str) -> None:
    """Kubeflow's webhooks want DNS-1035 labels (a letter first); a FineTuneJob's name is
    only DNS-1123 (``1st-run`` passes the CRD), so the launcher name must make it fit."""
    job = make_job(edits={"metadata.name": name})
    names = [builders.launcher_name(job, attempt) for attempt in (1, 2, 10)]
    for launched in names:
        assert builders.DNS_1035.match(launched), launched
        assert len(launched) <= builders.MAX_LAUNCHER_NAME
    assert len(set(names)) == 3  # per attempt
    assert builders.launcher_name(job, 1) == names[0]  # deterministic
    # and the PyTorchJob's pods and services leave room: <name>-worker-<N> ≤ 63
    assert len(f"{names[2]}-worker-511") <= 63


def test_names_that_map_to_the_same_stem_do_not_collide() -> None:
    for uid in ("0f6d8a4e-1111-2222-3333-444455556666", None):
        a = make_job(edits={"metadata.name": "1a", "metadata.uid": uid})
        b = make_job(edits={"metadata.name": "ftj-1a", "metadata.uid": uid})
        assert builders.launcher_name(a, 1) != builders.launcher_name(b, 1)
        assert builders.launcher_name(a, 1).startswith("ftj-1a-")
    # a name that already fits keeps the launcher name it always had
    job = make_job(edits={"metadata.name": "poems"})
    assert builders.launcher_name(job, 3) == (
        f"poems-{builders.short_hash(job.metadata.uid or '')}-3"
    )


def test_every_claim_the_spec_names_is_mounted_read_only(config: OperatorConfig) -> None:
    from tidetune.storage import open_store

    job = make_job(
        edits={
            "spec.baseModel.uri": "pvc://models/qwen2.5-1.5b/",
            "spec.data.train.uri": "pvc://team-a.datasets/poems/train.jsonl",
            "spec.data.validation": {"uri": "pvc://team-a.datasets/poems/val.jsonl"},
            "spec.data.mixIn": {"uri": "s3://datasets/general.jsonl", "ratio": 0.2},
        }
    )
    assert builders.claims(job) == ["models", "team-a.datasets"]
    for launcher in (PyTorchJobLauncher(), TrainJobLauncher()):
        obj = launcher.build(job, config, None, 1, False)
        if launcher.kind == "PyTorchJob":
            pod = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
            mounts = pod["containers"][0]["volumeMounts"]
        else:
            pod = pod_patch_of(obj)["spec"]
            mounts = pod["containers"][0]["volumeMounts"]
        by_claim = {
            v["persistentVolumeClaim"]["claimName"]: v
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert set(by_claim) == {"models", "team-a.datasets"}
        for claim, volume in by_claim.items():
            assert volume["persistentVolumeClaim"]["readOnly"] is True
            (mount,) = [m for m in mounts if m["name"] == volume["name"]]
            assert mount == {
                "name": volume["name"],
                "mountPath": f"/mnt/pvc/{claim}",
                "readOnly": True,
            }
            assert len(volume["name"]) <= 63 and builders.DNS_1035.match(volume["name"])
    # where the pods mount a claim is where the trainer's storage looks for it
    store, key = open_store("pvc://models/qwen2.5-1.5b/")
    assert str(store.path(key)) == "/mnt/pvc/models/qwen2.5-1.5b"  # type: ignore[attr-defined]
    # a job that names no claim mounts none
    plain = PyTorchJobLauncher().build(make_job(), config, None, 1, False)
    spec = plain["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]


def test_reward_function_configmaps_are_mounted_where_the_trainer_reads_them(
    config: OperatorConfig,
) -> None:
    fn = {"configMapRef": {"name": "math.rewards", "key": "reward.py"}, "entrypoint": "score"}
    other = {"configMapRef": {"name": "math.rewards", "key": "extra.py"}}
    job = make_job(
        edits={
            "spec.method": "grpo",
            "spec.data.train.format": "prompt-completion",
            "spec.rl": {
                "rewards": [
                    {"preset": "exact-match"},
                    {"function": fn},
                    {"function": {**fn, "entrypoint": "other"}},
                    {"function": other},
                ]
            },
        }
    )
    obj = PyTorchJobLauncher().build(job, config, None, 1, False)
    pod = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    container = pod["containers"][0]
    (vol,) = [
        v for v in pod["volumes"] if "configMap" in v and v["configMap"]["name"] == "math.rewards"
    ]
    assert vol["configMap"]["items"] == [
        {"key": "reward.py", "path": "reward.py"},
        {"key": "extra.py", "path": "extra.py"},
    ]
    assert builders.DNS_1035.match(vol["name"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == vol["name"]]
    assert mount == {
        "name": vol["name"],
        "mountPath": "/etc/tidetune-rewards/math.rewards",
        "readOnly": True,
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TIDETUNE_REWARD_SOURCES"] == "/etc/tidetune-rewards"
    # an SFT job mounts none
    plain = PyTorchJobLauncher().build(make_job(), config, None, 1, False)
    ppod = plain["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert not any(v["name"].startswith("rewards-") for v in ppod["volumes"])


def _containers(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trainer container of a launched PyTorchJob (Master, Workers) or TrainJob."""
    if body["kind"] == "PyTorchJob":
        return [
            c
            for replica in body["spec"]["pytorchReplicaSpecs"].values()
            for c in replica["template"]["spec"]["containers"]
        ]
    return [body["spec"]["trainer"]]


def _everything_job() -> FineTuneJob:
    """A job that makes the operator set every variable it can: a storage Secret, registry
    credentials, custom reward sources, a model not from the Hub."""
    return make_job(
        "grpo.yaml",
        edits={
            "spec.output.publish": {
                "registry": "https://mlflow.example.com",
                "credentialsSecretRef": {"name": "mlflow-auth"},
            },
            "spec.resources": {"nodes": 2, "gpusPerNode": 8},
        },
    )


@pytest.mark.parametrize(
    "launcher", [PyTorchJobLauncher(), TrainJobLauncher()], ids=["PyTorchJob", "TrainJob"]
)
def test_trainer_env_follows_the_operators_own_sorted_by_name(
    config: OperatorConfig, launcher: PyTorchJobLauncher | TrainJobLauncher
) -> None:
    job = _everything_job()
    own = [e["name"] for e in _containers(launcher.build(job, config, None, 1, False))[0]["env"]]
    extra = config.model_copy(
        update={"trainer_env": {"ZZ_LAST": "z", "NCCL_DEBUG": "WARN", "HF_ENDPOINT": "https://h"}}
    )
    containers = _containers(launcher.build(job, extra, None, 1, False))
    assert len(containers) == (2 if launcher.kind == "PyTorchJob" else 1)
    for container in containers:
        env = container["env"]
        assert [e["name"] for e in env[: len(own)]] == own
        assert env[len(own) :] == [
            {"name": "HF_ENDPOINT", "value": "https://h"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "ZZ_LAST", "value": "z"},
        ]


def test_the_refused_trainer_env_names_are_exactly_what_the_operator_sets(
    config: OperatorConfig,
) -> None:
    """OPERATOR_TRAINER_ENV (what config.trainerEnv refuses) cannot drift from pod_template."""
    for launcher in (PyTorchJobLauncher(), TrainJobLauncher()):
        body = launcher.build(_everything_job(), config, None, 1, False)
        for container in _containers(body):
            names = [e["name"] for e in container["env"]]
            assert len(names) == len(set(names))
            assert set(names) == OPERATOR_TRAINER_ENV


# --------------------------------------------------------------------------- reward runtime


def _rl_job(rewards: list[dict[str, object]], **runtime: object) -> FineTuneJob:
    rl: dict[str, object] = {"rewards": rewards}
    if runtime:
        rl["rewardRuntime"] = runtime
    return make_job(
        "sft-full.yaml",  # 8 GPUs per node: 8 trainer processes share the reward runtime
        edits={
            "spec.method": "grpo",
            "spec.data.train.format": "prompt-completion",
            "spec.rl": rl,
            # the trainer gets registry credentials too: the sidecar must not
            "spec.output.publish": {
                "registry": "https://mlflow.example.com",
                "credentialsSecretRef": {"name": "mlflow-auth"},
            },
        },
    )


FN = {"function": {"configMapRef": {"name": "r", "key": "reward.py"}, "entrypoint": "score"}}


def _pod(obj: dict[str, object]) -> dict[str, Any]:
    return obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]  # type: ignore[index,no-any-return]


def test_custom_reward_functions_get_a_reward_runtime_sidecar(config: OperatorConfig) -> None:
    job = _rl_job(
        [{"preset": "exact-match"}, FN],
        image="registry.example.com/team-a/rewards:1",
        cpu="3",
        memoryMiB=512,
    )
    pod = _pod(PyTorchJobLauncher().build(job, config, None, 1, False))
    (side,) = pod["initContainers"]
    assert side["name"] == "reward-runtime"
    assert side["restartPolicy"] == "Always"  # a native sidecar: up before, down after
    assert side["image"] == "registry.example.com/team-a/rewards:1"
    assert side["startupProbe"]["exec"]["command"][0] == "python"
    # nothing secret: no Secret refs, no envFrom, no job identity, a fixed allowlist
    assert "envFrom" not in side
    assert all("valueFrom" not in e for e in side["env"])
    names = {e["name"] for e in side["env"]}
    assert names == {e["name"] for e in builders.reward_runtime_env()}
    assert not any(n.startswith(("AWS_", "TIDETUNE_", "MLFLOW_")) for n in names)
    # no token, no Secret, no spec, no sources, no data: its own two folders only
    assert pod["automountServiceAccountToken"] is False
    assert not any("projected" in v or "secret" in v for v in pod["volumes"])
    assert {m["name"] for m in side["volumeMounts"]} == {"reward-socket", "reward-home"}
    assert not any(m["mountPath"].startswith("/var/run/secrets") for m in side["volumeMounts"])
    assert pod["shareProcessNamespace"] is False
    # restricted, as its own user
    sc = side["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] not in (0, pod["securityContext"]["runAsUser"])
    # its own resources: cpu from the spec, memory by default memoryMiB × 8 processes + 256
    assert side["resources"] == {
        "requests": {"cpu": "3", "memory": f"{8 * 512 + 256}Mi"},
        "limits": {"cpu": "3", "memory": f"{8 * 512 + 256}Mi"},
    }
    # the trainer reaches it through the shared folder, read-only on its side
    trainer = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    socket_path = env["TIDETUNE_REWARD_SOCKET"]
    cmd = side["command"]
    assert cmd[cmd.index("--listen") + 1] == socket_path
    assert cmd[:4] == ["python", "-I", "-m", "tidetune_trainer.rl.sandbox_host"]
    (tmount,) = [m for m in trainer["volumeMounts"] if m["name"] == "reward-socket"]
    (smount,) = [m for m in side["volumeMounts"] if m["name"] == "reward-socket"]
    assert tmount["readOnly"] is True and "readOnly" not in smount
    assert tmount["mountPath"] == smount["mountPath"] == socket_path.rsplit("/", 1)[0]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "reward-socket"]
    assert "emptyDir" in vol
    # the trainer keeps its credentials (it needs them); the sidecar has none of them
    assert "AWS_SECRET_ACCESS_KEY" in env and "MLFLOW_TRACKING_TOKEN" in env


def test_reward_runtime_defaults(config: OperatorConfig) -> None:
    side = _pod(PyTorchJobLauncher().build(_rl_job([FN]), config, None, 1, False))[
        "initContainers"
    ][0]
    assert side["image"] == config.trainer_image
    assert side["resources"]["limits"] == {"cpu": "8", "memory": f"{8 * 1024 + 256}Mi"}
    cpu_job = make_job(
        edits={
            "spec.method": "grpo",
            "spec.data.train.format": "prompt-completion",
            "spec.rl": {"rewards": [FN], "rewardRuntime": {"memory": "3Gi"}},
            "spec.resources": {"gpusPerNode": 0},
            "spec.scheduling": {},
        }
    )
    side = _pod(PyTorchJobLauncher().build(cpu_job, config, None, 1, False))["initContainers"][0]
    assert side["resources"]["limits"] == {"cpu": "1", "memory": "3Gi"}


def test_no_sidecar_without_custom_reward_functions(config: OperatorConfig) -> None:
    for job in (_rl_job([{"preset": "exact-match"}]), make_job()):
        pod = _pod(PyTorchJobLauncher().build(job, config, None, 1, False))
        assert "initContainers" not in pod
        assert not any(v["name"].startswith("reward-") for v in pod["volumes"])
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert "TIDETUNE_REWARD_SOCKET" not in env


def test_trainjob_custom_rewards_use_the_runtime_with_the_sidecar(config: OperatorConfig) -> None:
    tj = TrainJobLauncher().build(_rl_job([FN]), config, None, 1, False)
    assert tj["spec"]["runtimeRef"]["name"] == TrainJobLauncher.reward_runtime
    override = pod_patch_of(tj)["spec"]
    (side,) = override["initContainers"]
    assert side == {
        "name": "reward-runtime",
        "env": builders.reward_runtime_env(),
        "volumeMounts": builders.reward_runtime_mounts(),
        "securityContext": builders.reward_runtime_container(_rl_job([FN]), config)[
            "securityContext"
        ],
    }
    assert {"reward-socket", "reward-home"} <= {v["name"] for v in override["volumes"]}
    env = {e["name"]: e.get("value") for e in tj["spec"]["trainer"]["env"]}
    assert env["TIDETUNE_REWARD_SOCKET"]
    plain = TrainJobLauncher().build(_rl_job([{"preset": "exact-match"}]), config, None, 1, False)
    assert plain["spec"]["runtimeRef"]["name"] == TrainJobLauncher.runtime
    assert "initContainers" not in pod_patch_of(plain)["spec"]


def test_the_installs_trainer_env_stays_out_of_the_reward_runtime(config: OperatorConfig) -> None:
    extra = config.model_copy(update={"trainer_env": {"HF_TOKEN_PATH": "/x", "NCCL_DEBUG": "WARN"}})
    pod = _pod(PyTorchJobLauncher().build(_rl_job([FN]), extra, None, 1, False))
    assert pod["initContainers"][0]["env"] == builders.reward_runtime_env()
    assert {"HF_TOKEN_PATH", "NCCL_DEBUG"} <= {e["name"] for e in pod["containers"][0]["env"]}
