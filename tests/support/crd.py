"""Judge a manifest the way the API server judges it against a generated CRD.

The API server (1) prunes nulls, (2) applies schema defaults, (3) validates against the
structural OpenAPI schema with strict field validation (kubectl's default: unknown fields
are rejected), and (4) evaluates ``x-kubernetes-validations`` CEL rules. This module does
the same in Python so that tests can compare its verdict with the pydantic model's:

- OpenAPI 3.0 → JSON Schema draft 4 (``nullable`` → a null type, ``x-kubernetes-list-type:
  set`` → ``uniqueItems``, ``additionalProperties: false`` where the server would reject
  unknown fields);
- ``pattern`` with the ``regex`` module, which, like the API server's RE2, knows Unicode
  classes such as ``\\p{L}``;
- CEL with ``cel-python`` (transition rules, which need ``oldSelf``, only with an old object).

Known difference: cel-python's ``has(a.b.c)`` is false when ``a.b`` is missing, where the
API server's CEL raises an error; the rules guard their parents, so both agree here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import regex
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(Draft4Validator, {"pattern": _pattern})


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 (CRD) schema node as JSON Schema draft 4, with strict unknown fields."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if "anyOf" in node:
        out["anyOf"] = [to_json_schema(b) for b in node["anyOf"]]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def prune_nulls(value: Any) -> Any:
    """Drop ``key: null`` entries, as the API server does for non-nullable fields."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: fill absent properties that have a default, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(value[name], child)
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def _cel_rules(
    value: Any, old: Any, schema: dict[str, Any], path: str
) -> Iterator[tuple[str, str]]:
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        if "oldSelf" in rule and old is None:
            continue
        env = celpy.Environment()
        program = env.program(env.compile(rule))
        activation = {"self": celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = program.evaluate(activation)
        except celpy.CELEvalError as err:  # the API server reports evaluation errors as invalid
            ok = False
            entry = {**entry, "message": f"{entry['message']} (CEL error: {err})"}
        if isinstance(ok, celpy.celtypes.BoolType) and bool(ok) is True:
            continue
        if ok is True:
            continue
        yield path + entry.get("fieldPath", ""), entry["message"]
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name in value:
                old_child = old.get(name) if isinstance(old, dict) else None
                yield from _cel_rules(value[name], old_child, child, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _cel_rules(item, None, schema["items"], f"{path}[{i}]")


def server_verdict(
    crd: dict[str, Any], manifest: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    """What the API server would say about ``manifest``: a list of problems, empty if accepted."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    body = apply_defaults(prune_nulls(copy.deepcopy(manifest)), schema)
    problems = [
        f"{'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in _Validator(to_json_schema(schema)).iter_errors(body)
    ]
    if problems:
        return problems  # CEL runs only on schema-valid objects
    old_body = apply_defaults(prune_nulls(copy.deepcopy(old)), schema) if old else None
    return [f"{p}: {m}" for p, m in _cel_rules(body, old_body, schema, "")]
