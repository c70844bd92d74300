"""Validate rendered objects: built-in kinds with ``kubernetes-validate --strict``, the
prometheus-operator kinds against models generated from their real CRD schemas.

kubernetes-validate ships the Kubernetes OpenAPI schemas (strict variants reject unknown
fields) but none for ``monitoring.coreos.com``. For ServiceMonitor, PodMonitor and
PrometheusRule we use ``cloudcoil-models-prometheus-operator`` (PyPI): pydantic models
generated from the prometheus-operator CRDs' ``openAPIV3Schema`` (types, required fields,
enums, patterns such as the duration pattern). Those models ignore unknown fields, so
:func:`validate_monitoring` also compares the input's keys with what the model kept and
reports every key the schema does not know: together that is the API server's strict field
validation. What neither checks: CEL rules (``x-kubernetes-validations``) of the
monitoring CRDs, and the PromQL in a PrometheusRule (``promtool`` checks that in
tests/observability/).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kubernetes_validate
import pydantic

from tests.helm.chart import MONITORING_KINDS

#: cloudcoil-models-prometheus-operator 0.80.1.0 = prometheus-operator v0.80.1's CRDs.
MONITORING_MODELS_VERSION = "0.80.1.0"


def validate_builtin(doc: dict[str, Any], kube_version: str) -> list[str]:
    """Problems with one built-in object (or a CRD) under ``kubernetes-validate --strict``."""
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        return [f"{_name(doc)} (k8s {kube_version}): {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{_name(doc)}: {err.message}"]
    return []


def validate_monitoring(doc: dict[str, Any]) -> list[str]:
    """Problems with a ServiceMonitor, PodMonitor or PrometheusRule (see the module doc).

    Raises:
        ValueError: ``doc`` is not one of those kinds.
    """
    from cloudcoil.models.prometheus_operator import v1

    models: dict[str, type[pydantic.BaseModel]] = {
        "ServiceMonitor": v1.ServiceMonitor,
        "PodMonitor": v1.PodMonitor,
        "PrometheusRule": v1.PrometheusRule,
    }
    kind = doc.get("kind", "")
    if kind not in MONITORING_KINDS:
        raise ValueError(f"not a monitoring.coreos.com kind: {kind!r}")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        return [f"{_name(doc)}: apiVersion must be monitoring.coreos.com/v1"]
    try:
        model = models[kind].model_validate(doc)
    except pydantic.ValidationError as err:
        return [
            f"{_name(doc)}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        ]
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{_name(doc)}: {path}: unknown field" for path in _unknown_keys(doc, kept, "")]


def validate_all(docs: Iterable[dict[str, Any]], kube_versions: Iterable[str]) -> list[str]:
    """Every problem with every object, for each Kubernetes version (built-in kinds)."""
    problems: list[str] = []
    versions = list(kube_versions)
    for doc in docs:
        if doc.get("kind") in MONITORING_KINDS:
            problems += validate_monitoring(doc)
        else:
            for version in versions:
                problems += validate_builtin(doc, version)
    return problems


def _unknown_keys(given: Any, kept: Any, path: str) -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in kept:
                out.append(where)
            else:
                out += _unknown_keys(value, kept[key], where)
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        out = []
        for i, (g, k) in enumerate(zip(given, kept, strict=True)):
            out += _unknown_keys(g, k, f"{path}[{i}]")
        return out
    return []


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"
