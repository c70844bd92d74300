"""The chart's RBAC, read statically: no wildcards, Secrets get-only, both modes equivalent.

What the operator really uses is compared with these rules in tests/e2e/test_zz_rbac.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import (
    NAMESPACE,
    by_kind,
    granted_rules,
    one,
    rules_of,
    template,
    wildcard_rules,
)
from tidetune_operator.config import OperatorConfig
from tidetune_operator.launchers import LAUNCHERS
from tidetune_operator.launchers.trainjob import RUNTIME


def config() -> OperatorConfig:
    return OperatorConfig.model_validate({"trainerImage": "trainer:1"})


NAMESPACED_RESOURCES = {
    "finetunejobs",
    "finetunejobs/status",
    "finetunejobs/finalizers",
    "pytorchjobs",
    "configmaps",
    "pods",
    "pods/log",
    "secrets",
    "events",
}


@pytest.fixture(scope="module")
def cluster_docs() -> list[dict[str, Any]]:
    return template()


@pytest.fixture(scope="module")
def namespaced_docs() -> list[dict[str, Any]]:
    return template(extra=["--set", "namespaces={team-a,team-b}"])


def test_no_wildcards_and_secrets_are_get_only(
    cluster_docs: list[dict[str, Any]], namespaced_docs: list[dict[str, Any]]
) -> None:
    for docs in (cluster_docs, namespaced_docs):
        rules = granted_rules(docs)
        assert rules, "no RBAC rendered"
        assert wildcard_rules(rules) == []
        assert {r for r in rules if r[1] == "secrets"} == {("", "secrets", "get")}
        assert not any(r[1].startswith("secrets/") for r in rules)


def test_cluster_mode_is_one_cluster_role_bound_to_the_service_account(
    cluster_docs: list[dict[str, Any]],
) -> None:
    assert not by_kind(cluster_docs, "Role") and not by_kind(cluster_docs, "RoleBinding")
    role = one(cluster_docs, "ClusterRole")
    binding = one(cluster_docs, "ClusterRoleBinding")
    sa = one(cluster_docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = one(cluster_docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_namespaced_mode_grants_the_same_only_in_the_named_namespaces(
    cluster_docs: list[dict[str, Any]], namespaced_docs: list[dict[str, Any]]
) -> None:
    cluster_rules = rules_of(one(cluster_docs, "ClusterRole"))
    cluster_part = rules_of(one(namespaced_docs, "ClusterRole"))
    assert not {r for r in cluster_part if r[1] in NAMESPACED_RESOURCES}
    roles = by_kind(namespaced_docs, "Role")
    bindings = by_kind(namespaced_docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert {r[1] for r in rules_of(role)} <= NAMESPACED_RESOURCES
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    union = cluster_part | rules_of(roles[0])
    # kopf lists and watches namespaces only when it is given explicit ones
    assert union == cluster_rules | {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert rules_of(roles[0]) == rules_of(roles[1])


@pytest.mark.parametrize("kind", sorted(LAUNCHERS))
def test_rules_follow_the_configured_launcher(kind: str) -> None:
    launcher = LAUNCHERS[kind]
    docs = template(extra=["--set", f"config.launcher={kind}"])
    rules = rules_of(one(docs, "ClusterRole"))
    launched = {r for r in rules if r[0] == launcher.group and r[1] == launcher.plural}
    assert {r[2] for r in launched} == {"create", "delete", "get", "list", "patch", "watch"}
    others = {lk.group for lk in LAUNCHERS.values() if lk.group != launcher.group}
    assert not {r for r in rules if r[0] in others}
    # what else the launcher's group grants: the TrainJob runtime the operator keeps, by name
    named = [
        rule
        for rule in one(docs, "ClusterRole")["rules"]
        if launcher.group in rule["apiGroups"] and launcher.plural not in rule["resources"]
    ]
    if kind == "TrainJob":
        assert named == [
            {
                "apiGroups": ["trainer.kubeflow.org"],
                "resources": ["clustertrainingruntimes"],
                "resourceNames": [RUNTIME],
                "verbs": ["create", "patch"],
            }
        ]
        assert [o["metadata"]["name"] for o in launcher.cluster_objects(config())] == [RUNTIME]
    else:
        assert named == [] and launcher.cluster_objects(config()) == []


def test_rbac_can_be_left_to_the_platform() -> None:
    docs = template(extra=["--set", "rbac.create=false"])
    assert not granted_rules(docs)
    assert not by_kind(docs, "ClusterRoleBinding")


def test_owned_objects_may_block_their_owners_deletion(
    cluster_docs: list[dict[str, Any]], namespaced_docs: list[dict[str, Any]]
) -> None:
    """The PyTorchJob and ConfigMap carry blockOwnerDeletion: under the
    OwnerReferencesPermissionEnforcement admission plugin creating them needs update on
    finetunejobs/finalizers — that, and nothing else on finalizers."""
    for role in (one(cluster_docs, "ClusterRole"), *by_kind(namespaced_docs, "Role")):
        rules = rules_of(role)
        assert ("tidetune.io", "finetunejobs/finalizers", "update") in rules
        assert {r for r in rules if r[1].endswith("/finalizers")} == {
            ("tidetune.io", "finetunejobs/finalizers", "update")
        }
    assert not {
        r for r in rules_of(one(namespaced_docs, "ClusterRole")) if r[1].startswith("finetunejobs")
    }


def test_kueue_workload_priority_classes_are_read_only_and_cluster_wide(
    cluster_docs: list[dict[str, Any]], namespaced_docs: list[dict[str, Any]]
) -> None:
    """A job's spec.scheduling.workloadPriorityClass is checked before launch (Kueue makes no
    Workload for a class that does not exist): get on the cluster-scoped kind, in the
    ClusterRole in both modes, and nothing else of Kueue's."""
    for docs in (cluster_docs, namespaced_docs):
        kueue = {r for r in rules_of(one(docs, "ClusterRole")) if r[0] == "kueue.x-k8s.io"}
        assert kueue == {("kueue.x-k8s.io", "workloadpriorityclasses", "get")}
    for role in by_kind(namespaced_docs, "Role"):
        assert not {r for r in rules_of(role) if r[0] == "kueue.x-k8s.io"}
