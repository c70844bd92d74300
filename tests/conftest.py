"""Fixtures shared by several test tiers: the Kubernetes API emulator and the lab.

Imports of the heavy parts (kmock, aiohttp, moto) happen inside the fixtures, so that unit
and trainer tests do not pay for them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.lab.cluster import Lab as ClusterLab
    from tests.lab.deploy import Stack
    from tests.lab.lab import Lab
    from tests.support.apiserver import ApiServer
    from tests.support.k8s import EmulatorServer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def k8s(tmp_path: pathlib.Path) -> Iterator[EmulatorServer]:
    """A fresh Kubernetes API emulator on loopback (https + token), with ``crds/`` applied.

    ``k8s.kubeconfig`` is its kubeconfig, ``k8s.kubectl(...)`` runs kubectl against it,
    ``k8s.call(fn)`` runs ``fn`` on its event loop (to read ``k8s.emulator`` safely).
    """
    from tests.support.k8s import EmulatorServer, KubernetesEmulator, load_crd_documents

    crd_dir = REPO_ROOT / "crds"
    crds = load_crd_documents([crd_dir]) if crd_dir.is_dir() else []
    with EmulatorServer(tmp_path / "k8s", KubernetesEmulator(crds=crds)) as server:
        yield server


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[Lab]:
    """A started :class:`~tests.lab.lab.Lab` (API emulator + S3) in a temporary directory.

    Add the operator with ``lab.add_operator()``, other children with ``lab.add_process()``
    and in-process parts (the Kubeflow stand-in) with ``lab.add_component()``.
    """
    from tests.lab.lab import Lab

    with Lab(tmp_path / "lab") as started:
        yield started


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
def cluster_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    """The session's lab (:mod:`tests.lab.cluster`): a real cluster on this machine, its node
    agent, the Kubeflow training operator, Kueue and S3 — started once, shared by the e2e and
    observability tiers.

    ``TIDETUNE_LAB_DIR=DIR`` uses the lab that ``python -m tests.lab --dir DIR`` keeps up
    instead (quicker while working on a test; CI starts its own)."""
    import os

    from tests.lab.cluster import Lab as ClusterLab

    if os.environ.get("TIDETUNE_LAB_DIR"):
        yield ClusterLab.attach(os.environ["TIDETUNE_LAB_DIR"])
        return
    lab = ClusterLab(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def stack(cluster_lab: ClusterLab) -> Stack:
    """TideTune installed into the session's lab with its Helm chart (:mod:`tests.lab.deploy`).

    A test that changes the operator's configuration (``stack.configure``) restores it."""
    from tests.lab.deploy import Stack

    return Stack(cluster_lab).install()
