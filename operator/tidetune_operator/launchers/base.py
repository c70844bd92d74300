"""Launchers: how a FineTuneJob becomes a distributed training job on the cluster.

A launcher is a small interface (STYLE §9): build the object, read its state, suspend or
resume it. ``PyTorchJob`` (Kubeflow training operator v1) is what clusters run today;
``TrainJob`` (Kubeflow Trainer v2) is its sibling, selected with the operator setting
``launcher: TrainJob``. The local process launcher of ``tidetune run`` and the lab lives
in :mod:`tidetune.torchrun_nodes` (it runs processes, not cluster objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from tidetune.api import FineTuneJob
from tidetune.api.idlepool import IdlePool
from tidetune_operator.config import OperatorConfig


class LauncherPhase(StrEnum):
    PENDING = "Pending"  # created, pods not running yet
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class LauncherState:
    phase: LauncherPhase
    reason: str = ""
    message: str = ""


class Launcher(Protocol):
    """What the operator needs from a launcher kind."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str: ...

    def build(
        self,
        job: FineTuneJob,
        config: OperatorConfig,
        pool: IdlePool | None,
        attempt: int,
        suspend: bool,
    ) -> dict[str, Any]: ...

    def problem(self, job: FineTuneJob, pool: IdlePool | None) -> str | None:
        """What of the job's pod this kind cannot carry (then it is not launched)."""
        ...

    def cluster_objects(self, config: OperatorConfig) -> list[dict[str, Any]]:
        """Cluster-scoped objects the kind's jobs reference, which the operator keeps
        (server-side applied at start-up)."""
        ...

    def observe(self, obj: dict[str, Any]) -> LauncherState: ...

    def has_started(self, obj: dict[str, Any]) -> bool:
        """Whether its controller has acted on it (then the trainer may have written)."""
        ...

    def suspend_patch(self, suspend: bool) -> dict[str, Any]: ...

    def is_suspended(self, obj: dict[str, Any]) -> bool: ...


def state_from_conditions(
    obj: dict[str, Any], table: tuple[tuple[str, LauncherPhase], ...]
) -> LauncherState | None:
    """The state of the first condition type in ``table`` that is True, if any."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = {c.get("type", ""): c for c in conditions if str(c.get("status")) == "True"}
    for ctype, phase in table:
        if ctype in true:
            c = true[ctype]
            return LauncherState(phase, str(c.get("reason", "")), str(c.get("message", "")))
    return None


class KubeflowKind:
    """What both launchers share: where their kind lives in the API."""

    group: str
    version: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"
