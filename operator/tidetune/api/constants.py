"""Names that make up the API's state machine: group, phases, condition types, reasons.

Status is the state machine (STYLE.md §5): every phase, condition type and reason the
operator writes is a constant here, so the operator, the trainer, the CLI and the tests
spell them one way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

GROUP: Final = "tidetune.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

FINETUNEJOB_KIND: Final = "FineTuneJob"
FINETUNEJOB_PLURAL: Final = "finetunejobs"
FINETUNEJOB_SHORT_NAME: Final = "ftj"
IDLEPOOL_KIND: Final = "IdlePool"
IDLEPOOL_PLURAL: Final = "idlepools"
CATEGORY: Final = "tidetune"

#: Label put on everything a FineTuneJob owns (launcher, ConfigMap, pods).
JOB_LABEL: Final = "tidetune.io/job"
#: Label put on a launched job and its pods: the attempt (1, 2, …) that launched them.
ATTEMPT_LABEL: Final = "tidetune.io/attempt"
#: Label that hands a launched job to Kueue.
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
#: Label that gives a launched job's Kueue Workload the priority of a WorkloadPriorityClass.
KUEUE_PRIORITY_CLASS_LABEL: Final = "kueue.x-k8s.io/priority-class"

#: Timeline bounds: keep the first and the last entries, drop the middle.
TIMELINE_KEEP_FIRST: Final = 10
TIMELINE_KEEP_LAST: Final = 90


class Phase(StrEnum):
    """Where a FineTuneJob is in its life. Terminal phases never change again."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


class ConditionType(StrEnum):
    """Condition types on a FineTuneJob, per the Kubernetes API conventions."""

    VALIDATED = "Validated"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    #: the launched job's pods run (False: the scheduler's or the node's reason)
    PODS_READY = "PodsReady"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    #: the pods run but the trainer's step has not changed for the operator's stallTimeout
    STALLED = "Stalled"


class Reason(StrEnum):
    """Machine-readable reasons, used by conditions and timeline entries alike."""

    # pods of the launched job
    PODS_PENDING = "PodsPending"
    PODS_RUNNING = "PodsRunning"
    #: the pods did not run within the operator's startTimeoutSeconds: attempt ended
    START_TIMEOUT = "StartTimeout"
    # validation
    SPEC_VALID = "SpecValid"
    SPEC_INVALID = "SpecInvalid"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    POOL_NOT_FOUND = "PoolNotFound"
    WORKLOAD_PRIORITY_CLASS_NOT_FOUND = "WorkloadPriorityClassNotFound"
    POOL_INVALID = "PoolInvalid"
    POOL_TOO_SMALL = "PoolTooSmall"
    ESTIMATED = "Estimated"
    # queueing and admission
    WAITING_FOR_POOL_WINDOW = "WaitingForPoolWindow"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    WAITING_FOR_KUEUE = "WaitingForKueue"
    PREEMPTED_BY_KUEUE = "PreemptedByKueue"
    NOT_ENOUGH_WINDOW_LEFT = "NotEnoughWindowLeft"
    ADMITTED = "Admitted"
    LAUNCHED = "Launched"
    # running
    TRAINER_STARTED = "TrainerStarted"
    CHECKPOINT_SAVED = "CheckpointSaved"
    RESTARTING = "Restarting"
    #: no step for stallTimeoutSeconds while the pods run (Stalled=True); then progress again
    STALLED = "Stalled"
    PROGRESSING = "Progressing"
    # suspend and resume
    SUSPENDED_BY_USER = "SuspendedByUser"
    RESUMED_BY_USER = "ResumedByUser"
    WINDOW_CLOSING = "WindowClosing"
    WINDOW_OPENED = "WindowOpened"
    NODE_RECLAIMED = "NodeReclaimed"
    RESUMED = "Resumed"
    # the end
    EXPORTING = "Exporting"
    ARTIFACTS_EXPORTED = "ArtifactsExported"
    ARTIFACTS_INVALID = "ArtifactsInvalid"
    TRAINING_COMPLETE = "TrainingComplete"
    TRAINER_FAILED = "TrainerFailed"
    BAD_DATA = "BadData"
    MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
    TOO_MANY_FAILURES = "TooManyFailures"
    LAUNCHER_DELETED = "LauncherDeleted"
    #: the API server refused to create the launched job for good (invalid: 400/422)
    LAUNCH_REJECTED = "LaunchRejected"
    #: the API server refused it for now (forbidden, quota, no such kind: 403/404/429)
    LAUNCH_REFUSED = "LaunchRefused"
    CANCELLED = "Cancelled"


class Method(StrEnum):
    """Training method (spec.method)."""

    SFT = "sft"
    DPO = "dpo"
    CPT = "cpt"
    GRPO = "grpo"
    PPO = "ppo"

    @property
    def is_rl(self) -> bool:
        return self in (Method.GRPO, Method.PPO)


class TuningType(StrEnum):
    LORA = "lora"
    FULL = "full"


class DataFormat(StrEnum):
    """How each line of a dataset is laid out (spec.data.train.format)."""

    MESSAGES = "messages"
    PREFERENCE = "preference"
    TEXT = "text"
    PROMPT_COMPLETION = "prompt-completion"


class Offload(StrEnum):
    NONE = "none"
    CPU = "cpu"


class RewardPreset(StrEnum):
    """Built-in reward rules for GRPO/PPO (spec.rl.rewards[].preset)."""

    EXACT_MATCH = "exact-match"
    NUMERIC_MATCH = "numeric-match"
    CONTAINS_ANSWER = "contains-answer"
    REGEX_MATCH = "regex-match"
    CONTAINS_ALL = "contains-all"
    CONTAINS_ANY = "contains-any"
    JSON_VALID = "json-valid"
    THINK_FORMAT = "think-format"
    LENGTH_TARGET = "length-target"
    LENGTH_PENALTY = "length-penalty"


class AnswerExtraction(StrEnum):
    """Where a reward preset finds the answer in a text (spec.rl.rewards[].params.extract)."""

    AUTO = "auto"  # \boxed{…}, else after "####", else the last number (numeric) / whole text
    LAST_NUMBER = "last-number"
    BOXED = "boxed"
    AFTER_HASHES = "after-hashes"
    LAST_LINE = "last-line"
    NONE = "none"


class RlLossType(StrEnum):
    """GRPO loss variant (spec.rl.lossType)."""

    GRPO = "grpo"
    DAPO = "dapo"
    DR_GRPO = "dr_grpo"


class Day(StrEnum):
    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"

    @property
    def weekday(self) -> int:
        """Monday is 0, as in ``datetime.weekday()``."""
        return list(Day).index(self)


#: Spec fields that may change after a job has started (dotted camelCase paths).
MUTABLE_AFTER_START: Final = (
    "suspend",
    "cancelled",
    "scheduling.priority",
    "scheduling.maxRuntime",
)

#: Model URI schemes the trainer can load from.
MODEL_URI_SCHEMES: Final = ("s3", "pvc", "file", "hf", "builtin")
#: Built-in models (``builtin://NAME``): tiny random models for smoke tests of the platform.
BUILTIN_MODELS: Final = ("tiny-llama",)
#: Data and output URI schemes.
DATA_URI_SCHEMES: Final = ("s3", "pvc", "file")
