"""Where a job's files live in object storage, and the names the trainer writes there.

One definition for both sides: the trainer writes these names, the operator reads them;
what the documents hold is :mod:`tidetune.contract`.

``<output base>/<namespace>/<name>/<uid>/`` is the job's root: exported artifacts and
``manifest.json`` at the top, the run location (checkpoints, ``progress.json``,
``metrics.jsonl``, ``estimate.json``) under ``run/``. The uid keeps a re-created job
with the same name from ever resuming or overwriting the old one's files.
"""

from __future__ import annotations

from typing import Final

RUN_DIR: Final = "run"
PROGRESS_FILE: Final = "progress.json"
METRICS_FILE: Final = "metrics.jsonl"
ESTIMATE_FILE: Final = "estimate.json"
MANIFEST_FILE: Final = "manifest.json"
#: the data pipeline's report (samples, tokens, packing), under the run location
DATA_REPORT_FILE: Final = "data-report.json"
SPEC_FILE: Final = "job.yaml"
SPEC_MOUNT: Final = "/etc/tidetune"


#: metrics.jsonl keys → the ``status.metrics`` field each latest value goes to (the
#: trainer's progress.json ``metrics`` uses the status names)
STATUS_METRICS: Final = {
    "loss": "trainLoss",
    "evalLoss": "evalLoss",
    "learningRate": "learningRate",
    "tokensPerSecond": "tokensPerSecond",
    "gradNorm": "gradNorm",
    # GRPO / PPO
    "reward": "reward",
    "rewardStd": "rewardStd",
    "kl": "kl",
    "entropy": "entropy",
    "completionLength": "completionLength",
    "clipFraction": "clipFraction",
}


#: where the trainer finds reward functions' sources: ``<dir>/<configmap>/<key>`` (the
#: operator mounts each referenced ConfigMap there; ``tidetune run`` lays out the file's)
REWARD_SOURCES_ENV: Final = "TIDETUNE_REWARD_SOURCES"
REWARD_SOURCES_MOUNT: Final = "/etc/tidetune-rewards"
#: where the reward runtime container (a sidecar of the trainer pod) listens; set on
#: the trainer container, it makes the trainer use that container instead of starting
#: the sandbox host itself
REWARD_SOCKET_ENV: Final = "TIDETUNE_REWARD_SOCKET"
REWARD_SOCKET_DIR: Final = "/var/run/tidetune-reward"
REWARD_SOCKET_PATH: Final = f"{REWARD_SOCKET_DIR}/sandbox.sock"


def job_root(output_base: str, namespace: str, name: str, uid: str) -> str:
    """``<output base>/<namespace>/<name>/<uid>`` (no trailing slash)."""
    return f"{output_base.rstrip('/')}/{namespace}/{name}/{uid}"


def run_uri(root: str) -> str:
    return f"{root}/{RUN_DIR}"


# --------------------------------------------------------------------------- rank logs

#: each rank's log, under the run location: ``logs/attempt-<N>/rank-<R>.log``
LOGS_DIR: Final = "logs"
#: the attempt number the trainer files its log under (the operator sets it in each pod)
ATTEMPT_ENV: Final = "TIDETUNE_ATTEMPT"
#: where the trainer writes its last words (the pod's terminationMessagePath); the
#: variable overrides it (``tidetune run`` points it into the run folder)
TERMINATION_LOG_ENV: Final = "TIDETUNE_TERMINATION_LOG"
TERMINATION_LOG_PATH: Final = "/dev/termination-log"


def rank_log_key(attempt: int, rank: int) -> str:
    """``logs/attempt-<N>/rank-<R>.log``, relative to the run location."""
    return f"{LOGS_DIR}/attempt-{attempt}/rank-{rank}.log"


def pod_log_key(attempt: int, pod: str) -> str:
    """``logs/attempt-<N>/<pod>.log``, relative to the run location: the last lines of a
    failed pod's log (what the kubelet kept of its container's output: the launcher's,
    torchrun's and native errors besides the ranks' logs), kept there by the operator
    before the attempt's pods are deleted."""
    return f"{LOGS_DIR}/attempt-{attempt}/{pod}.log"


def parse_rank_log_key(key: str) -> tuple[int, int] | None:
    """``(attempt, rank)`` from a key that ends in ``attempt-<N>/rank-<R>.log``, else None."""
    parts = key.rsplit("/", 2)
    if len(parts) < 2 or not parts[-2].startswith("attempt-") or not parts[-1].startswith("rank-"):
        return None
    attempt, rank = parts[-2].removeprefix("attempt-"), parts[-1].removeprefix("rank-")
    rank = rank.removesuffix(".log")
    if not (attempt.isdigit() and rank.isdigit()):
        return None
    return int(attempt), int(rank)


# --------------------------------------------------------------------------- local runs

#: ``tidetune run --workdir DIR``: the object store is ``DIR/store``; each run lives in
#: ``store/runs/<namespace>/<name>/<uid>/`` and artifacts, unless the spec names an output,
#: in ``store/artifacts/<namespace>/<name>/<uid>/``. Besides the trainer's files the run
#: folder holds the job as run (``job.json``, with its uid), its ``timeline.json`` and,
#: while ``tidetune run`` is running, ``local.json`` (its pid); ``tidetune cancel`` writes
#: ``cancel.json``.
LOCAL_STORE_DIR: Final = "store"
LOCAL_RUNS_DIR: Final = "runs"
LOCAL_ARTIFACTS_DIR: Final = "artifacts"
LOCAL_JOB_FILE: Final = "job.json"
LOCAL_TIMELINE_FILE: Final = "timeline.json"
LOCAL_PROCESS_FILE: Final = "local.json"
LOCAL_CANCEL_FILE: Final = "cancel.json"
LOCAL_TERMINATION_LOG: Final = "termination-log"


def local_uid(namespace: str, name: str) -> str:
    """The uid of a local run of a job without ``metadata.uid`` (stable: reruns resume)."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tidetune.io/local/{namespace}/{name}"))
