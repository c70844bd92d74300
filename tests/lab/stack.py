"""The whole TideTune stack in the lab: API, S3, the Kubeflow stand-in and the operator.

``build_lab`` is what ``python -m tests.lab`` and the end-to-end tests use, so a person
at a terminal and the tests see the same thing.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from tests.lab.kubeflow import KubeflowStandIn
from tests.lab.lab import Lab
from tidetune.torchrun_nodes import free_port

#: Operator settings for the lab: quick observation, short resyncs.
LAB_OPERATOR_ENV = {
    "TIDETUNE_OBSERVE_INTERVAL": "1",
    "TIDETUNE_RESYNC_INTERVAL": "5",
    "TIDETUNE_DEFAULT_OUTPUT_URI": "s3://tidetune/artifacts",
    "TIDETUNE_TRAINER_IMAGE": "tidetune-trainer:lab",
}


def build_lab(
    workdir: str | pathlib.Path,
    *,
    operator: bool = True,
    kubeflow: bool = True,
    operator_env: Mapping[str, str] | None = None,
    grace_seconds: float = 60.0,
    trainer_env: Mapping[str, str] | None = None,
) -> Lab:
    """A lab (not started) with the stand-in and the operator registered."""
    lab = Lab(workdir)
    if kubeflow:
        lab.add_component(
            KubeflowStandIn(grace_seconds=grace_seconds, extra_env=dict(trainer_env or {}))
        )
    if operator:
        port = free_port()
        env = {**LAB_OPERATOR_ENV, "TIDETUNE_METRICS_PORT": str(port), **(operator_env or {})}
        lab.add_operator(
            "tidetune_operator.handlers",
            extra_args=["--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=env,
            metrics_url=f"http://127.0.0.1:{env['TIDETUNE_METRICS_PORT']}/metrics",
        )
    return lab
