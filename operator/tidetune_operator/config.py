"""The operator's configuration: typed, documented, loaded from a YAML file and the environment.

Sources, later ones win: the defaults below, the YAML file named by ``TIDETUNE_CONFIG``
(the Helm chart mounts one from its values), and single ``TIDETUNE_*`` environment
variables for the settings a lab or a test most often changes (listed in ``ENV``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidetune import layout
from tidetune.api.types import Quantity
from tidetune.estimate import DEFAULT_GPU_TYPE, DEFAULT_TABLES, EstimateTables

CONFIG_ENV = "TIDETUNE_CONFIG"
#: The longest wait between start-timeout retries (Kueue's requeuing backoff has the same cap).
START_RETRY_BACKOFF_MAX_SECONDS = 3600.0

#: Environment variables the operator itself sets in trainer containers
#: (``builders.pod_template``); ``trainerEnv`` may not set them.
OPERATOR_TRAINER_ENV: frozenset[str] = frozenset(
    {
        "TIDETUNE_JOB_NAME",
        "TIDETUNE_JOB_NAMESPACE",
        "TIDETUNE_JOB_UID",
        "TIDETUNE_ATTEMPT",
        layout.TERMINATION_LOG_ENV,
        layout.REWARD_SOURCES_ENV,
        layout.REWARD_SOCKET_ENV,
        "HOME",
        "HF_HUB_OFFLINE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "TIDETUNE_S3_ENDPOINT",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
)
#: an environment variable name as Kubernetes has always accepted it (a C identifier, plus
#: '.' and '-')
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class DefaultResources(BaseModel):
    """Resources for training pods when a job leaves cpu/memory unset."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    cpu_per_gpu: Quantity = Field("8", alias="cpuPerGpu", description="CPU request per GPU.")
    memory_per_gpu: Quantity = Field("64Gi", alias="memoryPerGpu", description="Memory per GPU.")
    cpu_only_cpu: Quantity = Field("2", alias="cpuOnlyCpu", description="CPU for a 0-GPU job.")
    cpu_only_memory: Quantity = Field(
        "4Gi", alias="cpuOnlyMemory", description="Memory, 0-GPU job."
    )


class OperatorConfig(BaseModel):
    """Everything an operator install may tune. Field aliases are the YAML keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    trainer_image: str = Field(
        "ghcr.io/tidetune/trainer:0.1.0",
        alias="trainerImage",
        description="Image of training pods (Dockerfile.trainer).",
    )
    image_pull_policy: str = Field("IfNotPresent", alias="imagePullPolicy")
    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch; empty watches all (kopf -A).",
    )
    launcher: str = Field(
        "PyTorchJob", description="Launcher kind: PyTorchJob (Kubeflow v1) or TrainJob (v2)."
    )
    default_output_uri: str | None = Field(
        None,
        alias="defaultOutputUri",
        description="Where artifacts go when a job sets no spec.output.uri.",
    )
    default_gpu_type: str = Field(DEFAULT_GPU_TYPE, alias="defaultGpuType")
    default_resources: DefaultResources = Field(
        default_factory=DefaultResources, alias="defaultResources"
    )
    gpu_resource_name: str = Field("nvidia.com/gpu", alias="gpuResourceName")
    termination_grace_seconds: int = Field(
        300,
        alias="terminationGraceSeconds",
        ge=30,
        description="Pod grace period: long enough for the trainer to checkpoint on SIGTERM.",
    )
    trainer_metrics_port: int = Field(9400, alias="trainerMetricsPort", ge=0, le=65535)
    metrics_port: int = Field(8080, alias="metricsPort", ge=0, le=65535)
    observe_interval_seconds: float = Field(
        10.0, alias="observeIntervalSeconds", gt=0, description="How often running jobs are read."
    )
    resync_interval_seconds: float = Field(
        60.0, alias="resyncIntervalSeconds", gt=0, description="Full level-based resync."
    )
    max_failures: int = Field(
        3, alias="maxFailures", ge=0, description="Genuine trainer crashes retried before Failed."
    )
    start_timeout_seconds: float = Field(
        900.0,
        alias="startTimeoutSeconds",
        ge=0,
        description="How long a launched job's pods may stay Pending (unschedulable, image "
        "pull or container errors) before the attempt is ended and the job re-queued; 0: never.",
    )
    start_retry_backoff_seconds: float = Field(
        60.0,
        alias="startRetryBackoffSeconds",
        gt=0,
        description="Wait before the next attempt after a start timeout; doubles with each "
        f"start timeout of the job, up to {START_RETRY_BACKOFF_MAX_SECONDS:.0f} s.",
    )
    max_start_timeouts: int = Field(
        3,
        alias="maxStartTimeouts",
        ge=0,
        description="Start timeouts retried before the job fails (StartTimeout).",
    )
    stall_timeout_seconds: float = Field(
        1800.0,
        alias="stallTimeoutSeconds",
        ge=0,
        description="A running attempt whose trainer's step has not changed for this long "
        "(counted from the later of the last step change and its pods' start) is Stalled: it "
        "is ended and the next attempt resumes from the last checkpoint. 0 turns it off.",
    )
    workers: int = Field(16, ge=1, le=256, description="Concurrent reconciles.")
    request_timeout_seconds: float = Field(30.0, alias="requestTimeoutSeconds", gt=0)
    watch_timeout_seconds: int = Field(300, alias="watchTimeoutSeconds", gt=0)
    clock_offset_seconds: float = Field(
        0.0,
        alias="clockOffsetSeconds",
        description="TEST FACILITY: shifts the operator's clock (pool windows) by this much.",
    )
    currency: str = "USD"
    throughput: dict[str, float] = Field(
        default_factory=dict, description="Effective TFLOP/s per device type (overrides)."
    )
    prices: dict[str, float] = Field(
        default_factory=dict, description="Price per device-hour per device type (overrides)."
    )
    trainer_env: dict[str, str] = Field(
        default_factory=dict,
        alias="trainerEnv",
        description="Environment variables (name → value) added to every trainer container, "
        "sorted by name, after the operator's own; names the operator sets are refused.",
    )

    @field_validator("trainer_env")
    @classmethod
    def _trainer_env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in sorted(env):
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not an environment variable name "
                    "(letters, digits, '_', '.', '-'; not starting with a digit)"
                )
            if name in OPERATOR_TRAINER_ENV:
                raise ValueError(
                    f"{name} is set by the operator itself in every trainer container; "
                    "remove it from trainerEnv"
                )
        return env

    @property
    def estimate_tables(self) -> EstimateTables:
        return EstimateTables(
            throughput={**DEFAULT_TABLES.throughput, **self.throughput},
            prices={**DEFAULT_TABLES.prices, **self.prices},
            currency=self.currency,
        )


#: Environment variables that override one setting each.
ENV: dict[str, str] = {
    "TIDETUNE_TRAINER_IMAGE": "trainerImage",
    "TIDETUNE_DEFAULT_OUTPUT_URI": "defaultOutputUri",
    "TIDETUNE_METRICS_PORT": "metricsPort",
    "TIDETUNE_OBSERVE_INTERVAL": "observeIntervalSeconds",
    "TIDETUNE_RESYNC_INTERVAL": "resyncIntervalSeconds",
    "TIDETUNE_CLOCK_OFFSET": "clockOffsetSeconds",
    "TIDETUNE_LAUNCHER": "launcher",
    "TIDETUNE_WORKERS": "workers",
}


class ConfigError(Exception):
    """The configuration is invalid; the message names the setting."""


def load_config(environ: dict[str, str] | None = None) -> OperatorConfig:
    """Defaults ← the ``TIDETUNE_CONFIG`` file ← single environment variables."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = env.get(CONFIG_ENV)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{CONFIG_ENV}={path}: cannot read it: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{CONFIG_ENV}={path}: expected a mapping of settings")
        data.update(loaded)
    for var, key in ENV.items():
        if env.get(var):
            data[key] = env[var]
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError("invalid operator configuration:\n  " + "\n  ".join(lines)) from err
