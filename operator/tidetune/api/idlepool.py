"""The IdlePool resource: a GPU node pool that serves online traffic by day and idles by night.

Window arithmetic (is the pool open now, when does it next change) lives in
:mod:`tidetune.windows`; this module is only the typed resource.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tidetune.api.cel import fail, rule, validations
from tidetune.api.constants import IDLEPOOL_KIND, Day
from tidetune.api.finetunejob import GPU_TYPE_PATTERN, ObjectMeta, StatusModel
from tidetune.api.types import ApiModel, ClockTime, Duration, Timezone, clock_minutes


class Toleration(ApiModel):
    """A Kubernetes toleration, copied onto training pods."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
                "a toleration with operator Exists takes no value",
                ".value",
            ),
        )
    )

    key: str | None = Field(
        None, max_length=316, description="Taint key; empty matches all keys with Exists."
    )
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal (default).")
    value: str | None = Field(None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: how long to stay."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.operator == "Exists" and self.value is not None:
            fail("value", "a toleration with operator Exists takes no value")
        return self


class Window(ApiModel):
    """A weekly idle window: on each listed day from start to end (end may cross midnight)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "self.start != self.end",
                "start and end are equal; for a whole day write start 00:00 and end 24:00",
                ".end",
            ),
            rule("self.start != '24:00'", "start must be 00:00–23:59", ".start"),
        )
    )

    days: list[Day] = Field(
        min_length=1,
        max_length=7,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Days the window starts on: Mon Tue Wed Thu Fri Sat Sun.",
    )
    start: ClockTime = Field(description="Opens at HH:MM (00:00–23:59), pool time zone.")
    end: ClockTime = Field(
        description="Closes at HH:MM (00:01–24:00); earlier than start means the next day."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.days)) != len(self.days):
            fail("days", "a day is listed twice; list each day once")
        if self.start == "24:00":
            fail("start", "start must be 00:00–23:59; 24:00 is only an end")
        if self.start == self.end:
            fail("end", "start and end are equal; for a whole day write start 00:00 and end 24:00")
        return self

    @property
    def start_minute(self) -> int:
        return clock_minutes(self.start)

    @property
    def end_minute(self) -> int:
        return clock_minutes(self.end)


class IdlePoolSpec(ApiModel):
    """Nodes, capacity and the weekly windows when TideTune may use them."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels selecting the pool's nodes; copied onto training pods.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for the pool's taints."
    )
    gpus: int = Field(ge=1, le=100_000, description="GPUs TideTune may use while the pool is open.")
    gpu_type: str | None = Field(
        None,
        max_length=64,
        pattern=GPU_TYPE_PATTERN,
        description="GPU model (e.g. a100) for estimates and the price table.",
    )
    timezone: Timezone = Field(
        "UTC", description="IANA time zone of the windows, e.g. Asia/Shanghai."
    )
    windows: list[Window] = Field(
        min_length=1, max_length=64, description="When the pool is idle; overlapping windows merge."
    )
    drain_before: Duration = Field(
        "10m", description="Checkpoint and suspend running jobs this long before a window closes."
    )
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass given to training pods."
    )


class IdlePoolStatus(StatusModel):
    open: bool = Field(False, description="Whether a window is open now.")
    next_transition: datetime | None = Field(
        None, description="When the pool next opens or closes."
    )
    gpus_in_use: int = Field(0, ge=0, description="GPUs held by admitted jobs.")
    running_jobs: int = Field(0, ge=0, description="Admitted jobs.")
    queued_jobs: int = Field(0, ge=0, description="Jobs waiting for this pool.")
    observed_generation: int | None = Field(None, ge=0)


class IdlePool(ApiModel):
    """An idle-time GPU node pool (cluster-scoped)."""

    api_version: Literal["tidetune.io/v1alpha1"] = Field(
        "tidetune.io/v1alpha1", description="tidetune.io/v1alpha1"
    )
    kind: Literal["IdlePool"] = Field(IDLEPOOL_KIND, description="IdlePool")
    metadata: ObjectMeta
    spec: IdlePoolSpec
    status: IdlePoolStatus | None = None
