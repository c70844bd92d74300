"""RBAC that is exactly enough, on the real API server: the chart grants what the operator
used, no more, and the server refuses the operator what it does not grant.

The lab's kube-apiserver writes an audit log of every request (``--audit-log-path``, level
Metadata): the user, the verb and the resource as its RBAC authorizer saw them, and the
response code. This module runs last in tests/e2e (by name), after the other modules' jobs,
and reads what the operator's ServiceAccount did there:

- RBAC refused no request of the operator (the audit annotation
  ``authorization.k8s.io/decision``);
- a granted triple nobody used and not in :data:`NEEDED_BUT_NOT_EXERCISED` (with a reason)
  is more privilege than needed;
- dropping a rule the operator needs makes the real server refuse it (the job says so).

Non-resource URLs (discovery: ``/api``, ``/apis``, ``/version``) need no rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helm.chart import granted_rules, template, wildcard_rules
from tests.lab.deploy import OPERATOR_USER, Stack, tiny_job, wait_for

pytestmark = [pytest.mark.e2e]

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

#: Rules the operator needs that the end-to-end run may not exercise, each with the
#: code path that needs it. They are granted; they need not show up in the recording.
NEEDED_BUT_NOT_EXERCISED: dict[Rule, str] = {
    ("kueue.x-k8s.io", "workloadpriorityclasses", "get"): (
        "references.check_references reads the WorkloadPriorityClass a job names "
        "(spec.scheduling.workloadPriorityClass; exercised by test_idle_pools' Kueue priority "
        "test, not by every e2e selection)"
    ),
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
        "with update on the owner's finalizers (an authorization check of the API server, "
        "not a request: test_without_finalizers_update_a_launch_is_refused exercises it)"
    ),
    ("trainer.kubeflow.org", "trainjobs", "get"): (
        "Kube.create_or_get, as for pytorchjobs (TrainJob launcher)"
    ),
    ("trainer.kubeflow.org", "clustertrainingruntimes", "create"): (
        "Controller._keep_cluster_objects server-side applies the TrainJob runtime: a PATCH "
        "(audited as patch) that creates it the first time, which the API server also "
        "authorizes as create on its name"
    ),
    ("tidetune.io", "idlepools/status", "patch"): (
        "Controller.reconcile_pool writes IdlePool status (open, next transition, GPUs used); "
        "only runs when an IdlePool exists"
    ),
}


def audit_events(stack: Stack) -> Iterator[dict[str, Any]]:
    """The operator's requests in the audit log (stage ResponseComplete)."""
    with open(stack.lab.audit_log) as log:
        for line in log:
            event = json.loads(line)
            if (
                event.get("stage") == "ResponseComplete"
                and event.get("user", {}).get("username") == OPERATOR_USER
            ):
                yield event


def used_rules(stack: Stack) -> set[Rule]:
    used = set()
    for event in audit_events(stack):
        ref = event.get("objectRef")
        if ref is None:  # a non-resource URL
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def chart_rules() -> set[Rule]:
    """What the chart grants with each launcher: the session ran the operator with both
    (tests/e2e/test_trainjob.py reinstalls it with ``launcher: TrainJob``)."""
    granted: set[Rule] = set()
    for launcher in ("PyTorchJob", "TrainJob"):
        docs = template(extra=["--set", f"config.launcher={launcher}"])
        assert not wildcard_rules(granted_rules(docs))
        granted |= granted_rules(docs)
    return granted


def test_the_operator_was_refused_nothing(stack: Stack) -> None:
    events = list(audit_events(stack))
    assert len(events) > 50, "the audit log has (almost) no request of the operator"
    refused = sorted(
        {
            f"{e['verb']} {e['requestURI'].split('?')[0]}"
            for e in events
            # the authorizer's verdict (a 403 can also be admission's, e.g. in a namespace
            # being deleted)
            if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        }
    )
    assert refused == [], f"the API server refused the operator: {refused}"


def test_the_chart_grants_nothing_more(stack: Stack) -> None:
    granted = chart_rules()
    used = used_rules(stack)
    assert used <= granted, f"used but not granted (a 403 on a cluster): {sorted(used - granted)}"
    extra = sorted(granted - used - set(NEEDED_BUT_NOT_EXERCISED))
    assert not extra, (
        f"the chart grants {extra} but the operator never used them in the end-to-end run; "
        "drop them from the chart, or add them to NEEDED_BUT_NOT_EXERCISED with the reason"
    )
    stale = sorted(set(NEEDED_BUT_NOT_EXERCISED) - granted)
    assert not stale, f"NEEDED_BUT_NOT_EXERCISED lists rules the chart no longer grants: {stale}"


def _drop_rule(stack: Stack, group: str, resource: str, verb: str) -> None:
    """Edit the operator's ClusterRole in place (as an admin could) without ``verb`` on
    ``group/resource``."""
    name = "tidetune"
    role = json.loads(stack.kubectl("get", "clusterrole", name, "-o", "json"))
    rules = []
    for rule in role["rules"]:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            others = [r for r in rule["resources"] if r != resource]
            if others:
                rules.append({**rule, "resources": others})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                rules.append({**rule, "resources": [resource], "verbs": verbs})
        else:
            rules.append(rule)
    role["rules"] = rules
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        role["metadata"].pop(key, None)
    stack.kubectl("replace", "-f", "-", input=yaml.safe_dump(role))


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (("tidetune.io", "finetunejobs/finalizers", "update"), "cannot set blockOwnerDeletion"),
        (("kubeflow.org", "pytorchjobs", "create"), "forbidden"),
    ],
)
def test_without_a_needed_rule_the_real_server_refuses_the_launch(
    stack: Stack, train_uri: str, rule: Rule, expected: str
) -> None:
    ns = "rbac-" + rule[1].replace("/", "-")
    stack.namespace(ns)
    _drop_rule(stack, *rule)
    try:
        stack.apply(tiny_job("refused", ns, train_uri))

        def refused() -> dict[str, Any] | None:
            st = stack.status(ns, "refused")
            admitted = next(
                (c for c in st.get("conditions") or [] if c["type"] == "Admitted"), None
            )
            return st if admitted and admitted["reason"] == "LaunchRefused" else None

        st = wait_for(
            refused, 60, f"{ns}/refused to be refused", lambda: stack.describe(ns, "refused")
        )
        assert st["phase"] == "Queued" and expected in st["message"], st["message"]
    finally:
        stack.install()  # helm puts the ClusterRole back
    st = stack.wait_phase(ns, "refused", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded", st.get("message")
