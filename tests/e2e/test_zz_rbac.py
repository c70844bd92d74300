"""RBAC that is exactly enough: the chart grants what the operator used in the lab, no more.

The lab's API emulator records every request as an RBAC authorizer sees it (verb, API group,
resource[/subresource]) with its User-Agent; the ``stack`` fixture collects, at each lab's
teardown, what the operator's two clients sent — kopf (``kopf/<version>``: list and watch)
and the operator's own aiohttp client (``tidetune-operator/<version>``: everything else).
This module runs last in tests/e2e (by name) and compares that with the rules of
``helm template`` (default values: every namespace, one ClusterRole):

- a used triple the chart does not grant → the operator would get 403 on a real cluster;
- a granted triple nobody used and that is not in :data:`NEEDED_BUT_NOT_EXERCISED` (with a
  reason) → more privilege than needed.

Non-resource URLs (discovery: ``/api``, ``/apis``, ``/version``) need no rules and are not
recorded.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import OPERATOR_AGENTS
from tests.helm.chart import granted_rules, template, wildcard_rules
from tests.support.k8s import RequestRecord

pytestmark = [pytest.mark.e2e]

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

#: Rules a real cluster needs that the lab's end-to-end run may not exercise, each with the
#: code path that needs it. They are granted; they need not show up in the recording.
NEEDED_BUT_NOT_EXERCISED: dict[Rule, str] = {
    ("kubeflow.org", "pytorchjobs", "get"): (
        "Kube.create_or_get: after a restart the operator may re-create a launched job that "
        "exists (409) and reads it back; the lab's restarted operator finds it in kopf's cache"
    ),
    ("kubeflow.org", "pytorchjobs", "delete"): (
        "Controller._execute DELETE_LAUNCHER: a superseded attempt's PyTorchJob is deleted"
    ),
    ("", "configmaps", "get"): (
        "references.check_references reads reward-function ConfigMaps of RL jobs (spec.rl.rewards"
        "[].function.configMapRef), and create_or_get reads back an existing spec ConfigMap"
    ),
    ("tidetune.io", "finetunejobs/finalizers", "update"): (
        "builders.owner_reference sets blockOwnerDeletion on the launched job and its "
        "ConfigMap; the OwnerReferencesPermissionEnforcement admission plugin allows that only "
        "with update on the owner's finalizers (checked by the API server, never requested)"
    ),
    ("tidetune.io", "idlepools/status", "patch"): (
        "Controller.reconcile_pool writes IdlePool status (open, next transition, GPUs used); "
        "only runs when an IdlePool exists"
    ),
}


def _used(records: set[RequestRecord]) -> set[Rule]:
    return {(r.group, r.resource, r.verb) for r in records}


def test_operator_requests_were_recorded(operator_api_usage: set[RequestRecord]) -> None:
    if not operator_api_usage:
        pytest.fail(
            "no operator API requests were recorded in this session: this test compares what "
            "the operator did in the end-to-end labs with the chart's RBAC, so run tests/e2e "
            "as a whole (e.g. `.venv/bin/python -m pytest tests/e2e`), not this file alone"
        )
    agents = {r.user_agent.split("/", 1)[0] + "/" for r in operator_api_usage}
    assert agents == set(OPERATOR_AGENTS), (
        f"expected requests from both {OPERATOR_AGENTS}, saw {sorted(agents)}: "
        "is the User-Agent header of tidetune_operator.kube still set?"
    )


def test_chart_grants_everything_the_operator_used(
    operator_api_usage: set[RequestRecord],
) -> None:
    if not operator_api_usage:
        pytest.fail("no operator API requests recorded: run tests/e2e as a whole")
    granted = granted_rules(template())
    missing = sorted(_used(operator_api_usage) - granted)
    assert not missing, (
        "the operator used these (apiGroup, resource, verb) but the chart's ClusterRole does "
        f"not grant them (it would get 403 on a real cluster): {missing}; add them to "
        "helm/tidetune/templates/_helpers.tpl"
    )


def test_chart_grants_nothing_more(operator_api_usage: set[RequestRecord]) -> None:
    if not operator_api_usage:
        pytest.fail("no operator API requests recorded: run tests/e2e as a whole")
    granted = granted_rules(template())
    assert wildcard_rules(granted) == []
    assert {r for r in granted if r[1] == "secrets"} == {("", "secrets", "get")}
    extra = sorted(granted - _used(operator_api_usage) - set(NEEDED_BUT_NOT_EXERCISED))
    assert not extra, (
        f"the chart grants {extra} but the operator never used them in the end-to-end run; "
        "drop them from the chart, or add them to NEEDED_BUT_NOT_EXERCISED with the reason"
    )
    stale = sorted(set(NEEDED_BUT_NOT_EXERCISED) - granted)
    assert not stale, f"NEEDED_BUT_NOT_EXERCISED lists rules the chart no longer grants: {stale}"


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        (
            "GET",
            "/apis/tidetune.io/v1alpha1/finetunejobs",
            {},
            ("list", "tidetune.io", "finetunejobs"),
        ),
        (
            "GET",
            "/apis/tidetune.io/v1alpha1/finetunejobs",
            {"watch": "true"},
            ("watch", "tidetune.io", "finetunejobs"),
        ),
        ("GET", "/api/v1/namespaces/a/secrets/s3", {}, ("get", "", "secrets")),
        ("POST", "/api/v1/namespaces/a/events", {}, ("create", "", "events")),
        ("PUT", "/api/v1/namespaces/a/configmaps/c", {}, ("update", "", "configmaps")),
        (
            "PATCH",
            "/apis/tidetune.io/v1alpha1/namespaces/a/finetunejobs/j/status",
            {},
            ("patch", "tidetune.io", "finetunejobs/status"),
        ),
        (
            "DELETE",
            "/apis/kubeflow.org/v1/namespaces/a/pytorchjobs/p",
            {},
            ("delete", "kubeflow.org", "pytorchjobs"),
        ),
        (
            "DELETE",
            "/apis/kubeflow.org/v1/namespaces/a/pytorchjobs",
            {},
            ("deletecollection", "kubeflow.org", "pytorchjobs"),
        ),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces")),
        ("GET", "/api/v1/namespaces/a", {}, ("get", "", "namespaces")),
        ("PUT", "/api/v1/namespaces/a/finalize", {}, ("update", "", "namespaces/finalize")),
        ("GET", "/api/v1/watch/namespaces/a/pods", {}, ("watch", "", "pods")),
        ("GET", "/api", {}, None),
        ("GET", "/apis/tidetune.io/v1alpha1", {}, None),
        ("GET", "/version", {}, None),
    ],
)
def test_requests_map_to_rbac_verbs_as_the_api_server_does(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str] | None
) -> None:
    from tests.support.k8s import rbac_attributes

    assert rbac_attributes(method, path, query) == expected
