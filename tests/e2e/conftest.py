"""The end-to-end tier: TideTune installed with its Helm chart into the session's lab (a real
control plane, the Kubeflow training operator, Kueue, the node agent, S3), driven with
kubectl as a user would. Each test uses namespaces of its own.

The helpers live in :mod:`tests.lab.deploy`; the ``cluster_lab`` and ``stack`` fixtures in
``tests/conftest.py``.
"""

from __future__ import annotations

import pytest

from tests.lab.deploy import Stack


@pytest.fixture(scope="session")
def train_uri(stack: Stack) -> str:
    """The arithmetic SFT set in the lab's S3."""
    return stack.train_uri()
