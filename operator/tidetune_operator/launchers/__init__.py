"""Launchers: how a FineTuneJob becomes a distributed training job on the cluster.

A launcher is a small interface (STYLE §9, :class:`Launcher`): build the object, read its
state, suspend or resume it; each launcher owns its builder. ``PyTorchJob`` (Kubeflow
training operator v1, :mod:`.pytorchjob`) is what clusters run today; ``TrainJob``
(Kubeflow Trainer v2, :mod:`.trainjob`) is its sibling, selected with the operator
setting ``launcher: TrainJob``. What both build on (names, labels, the pod template) is
:mod:`tidetune_operator.builders`. Running a job as local processes (``tidetune run``, the
lab) is :mod:`tidetune.torchrun_nodes`, not a launcher: it makes no cluster objects.
"""

from __future__ import annotations

from tidetune_operator.launchers.base import (
    KubeflowKind,
    Launcher,
    LauncherPhase,
    LauncherState,
    state_from_conditions,
)
from tidetune_operator.launchers.pytorchjob import PyTorchJobLauncher
from tidetune_operator.launchers.trainjob import TrainJobLauncher

__all__ = [
    "LAUNCHERS",
    "KubeflowKind",
    "Launcher",
    "LauncherPhase",
    "LauncherState",
    "PyTorchJobLauncher",
    "TrainJobLauncher",
    "get_launcher",
    "state_from_conditions",
]

LAUNCHERS: dict[str, Launcher] = {
    PyTorchJobLauncher.kind: PyTorchJobLauncher(),
    TrainJobLauncher.kind: TrainJobLauncher(),
}


def get_launcher(kind: str) -> Launcher:
    try:
        return LAUNCHERS[kind]
    except KeyError:
        raise ValueError(f"unknown launcher {kind!r}; allowed: {', '.join(LAUNCHERS)}") from None
