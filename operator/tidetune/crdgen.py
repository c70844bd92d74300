"""Generate the CustomResourceDefinitions from the pydantic models.

The models in :mod:`tidetune.api` are the single source of truth; ``crds/*.yaml`` and
the Helm chart's copies are this module's output (``tidetune crds --write crds/``), and
a test fails when they drift. The conversion turns pydantic's JSON Schema into a
*structural* OpenAPI v3 schema as the API server demands it: references inlined, every
node typed, ``Optional[X]`` as ``nullable``, no ``additionalProperties: false`` (the API
server prunes unknown fields, and rejects them under kubectl's default strict field
validation), draft-2020 exclusive bounds rewritten in OpenAPI 3.0 form.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from tidetune.api.cel import rule
from tidetune.api.constants import (
    CATEGORY,
    FINETUNEJOB_KIND,
    FINETUNEJOB_PLURAL,
    FINETUNEJOB_SHORT_NAME,
    GROUP,
    IDLEPOOL_KIND,
    IDLEPOOL_PLURAL,
    MUTABLE_AFTER_START,
    VERSION,
)
from tidetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from tidetune.api.idlepool import IdlePoolSpec, IdlePoolStatus
from tidetune.api.types import DNS1123_LABEL_PATTERN

Schema = dict[str, Any]

_DROP_KEYS = {"title", "additionalProperties_false"}


class SchemaError(Exception):
    """The model produced a schema the API server would reject as non-structural."""


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = node["$ref"].rsplit("/", 1)[-1]
            merged = copy.deepcopy(defs[target])
            for key, value in node.items():
                if key != "$ref":
                    merged[key] = value
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: Schema, where: str) -> Schema:
    """Rewrite one resolved JSON-Schema node (and its children) into a structural schema."""
    node = dict(node)
    for key in _DROP_KEYS:
        node.pop(key, None)

    # Optional[X] -> X, nullable
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and any(b.get("type") == "null" for b in any_of):
        rest = [b for b in any_of if b.get("type") != "null"]
        if len(rest) != 1:
            raise SchemaError(f"{where}: a union of several types cannot be structural")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        inner = dict(rest[0])
        inner.update(outer)
        if inner.get("default", 0) is None:
            inner.pop("default")
        inner["nullable"] = True
        return _structural(inner, where)

    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")

    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True

    if node.get("additionalProperties") is False:
        del node["additionalProperties"]

    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {
            name: _structural(child, f"{where}.{name}")
            for name, child in node["properties"].items()
        }
        if not node.get("required"):
            node.pop("required", None)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], f"{where}.*")
    if "items" in node:
        node["items"] = _structural(node["items"], f"{where}[]")

    if node.get("x-kubernetes-int-or-string"):
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "anyOf" in node or "oneOf" in node or "allOf" in node:
        raise SchemaError(f"{where}: anyOf/oneOf/allOf is not structural; simplify the model")
    elif "type" not in node:
        raise SchemaError(f"{where}: every node of a structural schema needs a type")

    if "default" in node and node["default"] is None:
        del node["default"]
    return node


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of ``model``, as the CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs), model.__name__)


def _immutability_rules(spec_model: type[BaseModel]) -> list[dict[str, Any]]:
    """CEL transition rules: once started, only the fields of MUTABLE_AFTER_START change."""
    allowed = ", ".join(f"spec.{path}" for path in MUTABLE_AFTER_START)
    started = "!has(oldSelf.status) || !has(oldSelf.status.startTime)"
    rules = []

    def compare(path: str, required: bool) -> str:
        new, old = f"self.spec.{path}", f"oldSelf.spec.{path}"
        if required:
            return f"{new} == {old}"
        leaf = path.rsplit(".", 1)
        parent_new = f"self.spec.{leaf[0]}" if len(leaf) == 2 else "self.spec"
        parent_old = f"oldSelf.spec.{leaf[0]}" if len(leaf) == 2 else "oldSelf.spec"
        guard_new = f"has({new})" if len(leaf) == 1 else f"(has({parent_new}) && has({new}))"
        guard_old = f"has({old})" if len(leaf) == 1 else f"(has({parent_old}) && has({old}))"
        return f"{guard_new} == {guard_old} && (!{guard_new} || {new} == {old})"

    mutable_parents = {p.split(".")[0] for p in MUTABLE_AFTER_START if "." in p}
    for name, field in spec_model.model_fields.items():
        alias = field.alias or name
        if alias in MUTABLE_AFTER_START:
            continue
        if alias in mutable_parents:
            sub = field.annotation
            assert isinstance(sub, type) and issubclass(sub, BaseModel)
            for sub_name, sub_field in sub.model_fields.items():
                path = f"{alias}.{sub_field.alias or sub_name}"
                if path in MUTABLE_AFTER_START:
                    continue
                rules.append(
                    rule(
                        f"{started} || ({compare(path, False)})",
                        f"spec.{path} cannot change once the job has started; only {allowed} can",
                        f".spec.{path}",
                    )
                )
            continue
        rules.append(
            rule(
                f"{started} || ({compare(alias, field.is_required())})",
                f"spec.{alias} cannot change once the job has started; only {allowed} can",
                f".spec.{alias}",
            )
        )
    return rules


def _root(spec: type[BaseModel], status: type[BaseModel], description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # The root rule's fieldPath (.metadata.name) must name a declared field: the
            # API server walks the structural schema and refuses the CRD otherwise.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status),
        },
    }


def _name_rule(max_length: int = 63) -> dict[str, Any]:
    return rule(
        f"self.metadata.name.size() <= {max_length} && "
        f"self.metadata.name.matches('{DNS1123_LABEL_PATTERN}')",
        f"metadata.name must be a DNS-1123 label of at most {max_length} characters",
        ".metadata.name",
    )


def _crd(
    kind: str,
    plural: str,
    scope: str,
    short_name: str,
    columns: list[dict[str, Any]],
    root: Schema,
) -> dict[str, Any]:
    """One CustomResourceDefinition document of the tidetune.io group."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tidetune"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": [CATEGORY],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _column(
    name: str, kind: str, path: str, description: str = "", priority: int = 0
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if description:
        column["description"] = description
    if priority:
        column["priority"] = priority
    return column


AGE = _column("Age", "date", ".metadata.creationTimestamp")


def finetunejob_crd() -> dict[str, Any]:
    """The FineTuneJob CRD."""
    root = _root(
        FineTuneJobSpec,
        FineTuneJobStatus,
        "FineTuneJob fine-tunes an LLM with DeepSpeed on (idle) GPU capacity.",
    )
    root["x-kubernetes-validations"] = [_name_rule(), *_immutability_rules(FineTuneJobSpec)]
    columns = [
        _column("Phase", "string", ".status.phase"),
        _column(
            "Progress", "number", ".status.progress.percent", "Percent of training steps done."
        ),
        _column("Loss", "number", ".status.metrics.trainLoss", "Latest training loss."),
        _column("Pool", "string", ".status.pool"),
        _column("ETA", "date", ".status.progress.eta", priority=1),
        _column("Method", "string", ".spec.method", priority=1),
        AGE,
    ]
    return _crd(
        FINETUNEJOB_KIND, FINETUNEJOB_PLURAL, "Namespaced", FINETUNEJOB_SHORT_NAME, columns, root
    )


def idlepool_crd() -> dict[str, Any]:
    """The IdlePool CRD."""
    root = _root(
        IdlePoolSpec,
        IdlePoolStatus,
        "IdlePool is a GPU node pool that serves online traffic by day and is free in its windows.",
    )
    root["x-kubernetes-validations"] = [_name_rule()]
    columns = [
        _column("Open", "boolean", ".status.open"),
        _column("GPUs", "integer", ".spec.gpus"),
        _column("In-Use", "integer", ".status.gpusInUse"),
        _column("Running", "integer", ".status.runningJobs"),
        _column("Queued", "integer", ".status.queuedJobs"),
        _column("Next", "date", ".status.nextTransition"),
        AGE,
    ]
    return _crd(IDLEPOOL_KIND, IDLEPOOL_PLURAL, "Cluster", "ipool", columns, root)


CRD_FILES = {"finetunejob.yaml": finetunejob_crd, "idlepool.yaml": idlepool_crd}

HEADER = "# Generated by `tidetune crds` from tidetune/api — do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    """One CRD as YAML, with the generated-file header."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, allow_unicode=True, width=100)


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {name: render(build()) for name, build in CRD_FILES.items()}
