"""Fixtures shared by several test tiers: a bare API server and the lab (a real cluster).

Imports of the heavy parts (the lab, moto) happen inside the fixtures, so that unit and
trainer tests do not pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.lab.cluster import Lab
    from tests.lab.deploy import Stack
    from tests.support.apiserver import ApiServer


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real etcd + kube-apiserver (built by ``.ci/setup``) with ``crds/`` installed.

    ``apiserver.verdict(manifest[, old=...])`` is what the server says about storing it.
    """
    from tests.support.apiserver import ApiServer

    server = ApiServer(tmp_path_factory.mktemp("apiserver")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's lab (:mod:`tests.lab.cluster`): a real cluster on this machine, its node
    agent, the Kubeflow training operator, Kueue, S3 and Trainer's CRDs — started once, shared
    by the e2e and observability tiers.

    ``TIDETUNE_LAB_DIR=DIR`` uses the lab that ``python -m tests.lab --dir DIR`` keeps up
    instead (quicker while working on a test; CI starts its own)."""
    import os

    from tests.lab.cluster import Lab

    if os.environ.get("TIDETUNE_LAB_DIR"):
        yield Lab.attach(os.environ["TIDETUNE_LAB_DIR"])
        return
    # Trainer's CRDs: Kueue's TrainJob integration starts with Kueue; tests/e2e/test_trainjob.py
    # starts Trainer and JobSet themselves (lab.start_trainer)
    lab = Lab(tmp_path_factory.mktemp("cluster"), trainer="crds").start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def stack(cluster_lab: Lab) -> Stack:
    """TideTune installed into the session's lab with its Helm chart (:mod:`tests.lab.deploy`).

    A test that changes the operator's configuration (``stack.configure``) restores it."""
    from tests.lab.deploy import Stack

    return Stack(cluster_lab).install()
